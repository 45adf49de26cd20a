"""The admin in a real headless browser (Debian's chromium, driven by Playwright): log in,
find a dead letter made by a real worker, requeue it, and see its job completed.

``DJQ_SCREENSHOTS=1`` also seeds an hour of history and saves the screenshots used in the
docs to ``docs/img/``.
"""

from __future__ import annotations

import mimetypes
import os
import random
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import django.contrib.admin
import pytest
from django.conf import settings
from django.test.testcases import LiveServerThread, _StaticFilesHandler
from django.test.utils import override_settings
from django.utils import timezone

from django_jobqueue.models import DeadLetter, Job
from tests.conftest import ROOT, wait_until
from tests.testapp.jobs import add, always_fails, fails_then_succeeds, other_queue

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = os.environ.get("DJQ_SCREENSHOTS") == "1"
IMAGES = ROOT / "docs" / "img"
ADMIN_STATIC = Path(django.contrib.admin.__file__).parent / "static"

try:
    from playwright.sync_api import Page, Route, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.subprocess,
    pytest.mark.skipif(sync_playwright is None, reason="needs playwright (pip install playwright)"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}"
    ),
]


def serve_admin_static(route: Route) -> None:
    """The test settings have no STATIC_URL, so the admin links its CSS and JS relative to
    the page; answer those requests from django.contrib.admin's static files."""
    match = re.search(r"/(admin/(?:css|js|img)/[^?#]+)", route.request.url)
    path = ADMIN_STATIC / match.group(1) if match else None
    if path is None or not path.is_file():
        route.fulfill(status=404, body="")
        return
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    route.fulfill(status=200, body=path.read_bytes(), content_type=content_type)


def log_in(page: Any, base: str, path: str) -> None:
    """Log in to the admin as ``admin`` / ``admin-pw`` (the superuser the tests make) and land
    on ``path`` (``/admin/...``)."""
    page.goto(f"{base}/admin/login/?next={path}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pw")
    page.click("input[type=submit]")
    page.wait_for_url(f"**{path}")


@pytest.fixture
def server_url(request, transactional_db):
    """pytest-django's ``live_server`` when the settings have a STATIC_URL; without one its
    static files handler fails every request, so run Django's live server thread here with a
    STATIC_URL for the length of the test."""
    if settings.STATIC_URL:
        yield request.getfixturevalue("live_server").url
        return
    with override_settings(STATIC_URL="/static/", ALLOWED_HOSTS=["127.0.0.1"]):
        thread = LiveServerThread("127.0.0.1", _StaticFilesHandler)
        thread.daemon = True
        thread.start()
        thread.is_ready.wait(timeout=10)
        if thread.error:
            raise thread.error
        try:
            yield f"http://127.0.0.1:{thread.port}"
        finally:
            thread.terminate()


def poll_page(page: Page, predicate, timeout: float = 30.0) -> None:
    """Reload ``page`` until ``predicate(page)``; fail after ``timeout`` seconds."""

    def shown() -> bool:
        if predicate(page):
            return True
        page.reload()
        return False

    wait_until(shown, timeout=timeout, interval=0.3)


def seed_history() -> None:
    """An hour of finished jobs and a waiting backlog, so the overview has something to
    show in the screenshots (rows written directly; only with DJQ_SCREENSHOTS=1)."""
    now = timezone.now()
    rng = random.Random(7)
    rows = []
    names = {
        "default": [add.name, fails_then_succeeds.name],
        "emails": ["shop.jobs.send_welcome_email"],
        "reports": ["shop.jobs.build_report"],
    }
    for minute in range(60):
        for queue, choices in names.items():
            load = {"default": 14, "emails": 6, "reports": 2}[queue]
            for _ in range(rng.randint(load // 2, load)):
                finished = now - timedelta(minutes=minute, seconds=rng.uniform(0, 59))
                started = finished - timedelta(seconds=rng.uniform(0.01, 2.5))
                failed = rng.random() < 0.04
                rows.append(
                    Job(
                        job_id=f"seed-{len(rows)}",
                        name=rng.choice(choices),
                        queue=queue,
                        args=[len(rows)],
                        status="failed" if failed else "completed",
                        attempts=3 if failed else 1,
                        max_attempts=3,
                        result_ttl=7200,
                        enqueued_at=started - timedelta(seconds=rng.uniform(0, 1)),
                        started_at=started,
                        finished_at=finished,
                        expires_at=finished + timedelta(hours=2),
                    )
                )
    for index in range(23):
        rows.append(
            Job(
                job_id=f"seed-waiting-{index}",
                name="shop.jobs.send_welcome_email",
                queue="emails",
                args=[index],
                max_attempts=5,
                result_ttl=3600,
                enqueued_at=now - timedelta(seconds=95 - index * 4),
            )
        )
    Job.objects.bulk_create(rows)


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / name), full_page=full_page)


@pytest.mark.django_db(transaction=True)
def test_requeue_a_dead_letter_in_the_browser(
    server_url, worker_processes, django_user_model, tmp_path
):
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    if SCREENSHOTS:
        seed_history()
    # A job that fails twice on a real worker (a dead letter), and succeeds when requeued.
    counter = tmp_path / "attempts"
    handle = fails_then_succeeds.using(max_attempts=2).enqueue(str(counter), 2)
    always_fails.enqueue("the feed is not XML")  # a second dead letter, left alone
    add.enqueue(2, 3)
    other_queue.enqueue("other")
    worker = worker_processes.start("--queue", "default", "--queue", "other")
    letter = wait_until(lambda: DeadLetter.objects.filter(job_id=handle.id).first(), timeout=30)
    wait_until(lambda: DeadLetter.objects.count() == 2, timeout=30)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(
                viewport={"width": 1600 if SCREENSHOTS else 1280, "height": 800}
            )
            page.route(re.compile(r".*/admin/(css|js|img)/.*"), serve_admin_static)

            log_in(page, server_url, "/admin/django_jobqueue/deadletter/")
            row = page.locator("#result_list tbody tr", has_text=handle.id)
            assert row.count() == 1
            assert "ValueError: failing attempt 2" in row.inner_text()

            if SCREENSHOTS:
                page.click("#toggle-nav-sidebar")  # more room for the list
                screenshot(page, "admin-dead-letters.png")
                row.locator("th a").click()
                page.wait_for_url(f"**/deadletter/{letter.pk}/change/")
                assert "Traceback (most recent call last)" in page.content()
                screenshot(page, "admin-dead-letter.png")
                page.go_back()

            row.locator("input[name=_selected_action]").check()
            page.select_option("select[name=action]", "requeue_selected")
            page.click("button[name=index]")
            page.wait_for_load_state()
            message = page.locator(".messagelist .success")
            assert "Requeued 1 dead letter" in message.inner_text()
            assert page.locator("#result_list tbody tr", has_text=handle.id).count() == 0

            message.locator("a").click()
            page.wait_for_url("**/admin/django_jobqueue/job/*/change/")
            poll_page(page, lambda p: "Completed" in p.inner_text(".field-status_display"))
            assert "1 / 2" in page.inner_text(".field-attempts_display")  # a fresh run
            assert page.inner_text(".field-result_display pre").strip() == "3"
            if SCREENSHOTS:
                screenshot(page, "admin-job.png")

            page.goto(f"{server_url}/admin/django_jobqueue/job/")
            page.click("text=Queue overview")
            page.wait_for_url("**/admin/django_jobqueue/job/overview/")
            default_row = page.locator("tr[data-queue=default]")
            assert default_row.locator(".djq-dead-letters").inner_text() == "1"
            assert default_row.locator("svg.djq-chart rect[fill]").count() >= 2
            if SCREENSHOTS:
                screenshot(page, "admin-overview.png")
                page.goto(f"{server_url}/admin/django_jobqueue/job/?status__exact=failed")
                screenshot(page, "admin-jobs.png", full_page=False)
        finally:
            browser.close()

    job = Job.objects.get(job_id=handle.id)
    assert (job.status, job.attempts) == ("completed", 1)
    assert not DeadLetter.objects.filter(job_id=handle.id).exists()
    assert "outcome=completed" in worker_processes.log(worker)
