"""An incident walked in a real headless browser (Debian's chromium, Playwright), with a real
worker process: the mail provider is down and 1,200 mails were dead-lettered. The operator
pauses the queue on the overview, searches the dead letters for the error, selects all N
matching, requeues them (a count, a confirmation, batches), looks at the job list, and
resumes the queue; only then does the worker run them.

``DJQ_SCREENSHOTS=1`` saves the pages at 1280 px to ``docs/img/`` (``admin-console-*.png``).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connections
from django.utils import timezone

from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.pauses import paused_queues
from tests.conftest import wait_until
from tests.test_browser import (  # noqa: F401 - server_url is a fixture
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGES,
    SCREENSHOTS,
    log_in,
    pytestmark,
    serve_admin_static,
    server_url,
    sync_playwright,
)
from tests.testapp.jobs import add

LETTERS = 1_200


def db(function):
    """``function()`` in a thread of its own: Django refuses the ORM on the thread where
    Playwright's event loop runs."""

    def run():
        try:
            return function()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def seed() -> None:
    """1,200 dead letters of the mail queue (the outage) and 5 of another cause."""
    now = timezone.now()

    def letter(index: int, error: str, queue: str) -> DeadLetter:
        return DeadLetter(
            job_id=f"mail-{index}",
            name=add.name,
            queue=queue,
            args=[index, 1],
            max_attempts=3,
            result_ttl=3600,
            attempts=3,
            error=error,
            traceback="Traceback (most recent call last):\n  ...\n" + error,
            enqueued_at=now,
        )

    outage = "SMTPServerDisconnected: 421 mx.example.net service not available"
    DeadLetter.objects.bulk_create(
        [letter(index, outage, "emails") for index in range(LETTERS)]
        + [letter(LETTERS + index, "ValueError: bad address", "emails") for index in range(5)]
    )


@pytest.mark.django_db(transaction=True)
def test_an_incident_pause_search_select_all_requeue_resume(
    server_url,  # noqa: F811
    worker_processes,
    django_user_model,
    tmp_path,
):
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    seed()
    images = IMAGES if SCREENSHOTS else tmp_path
    worker = worker_processes.start("--queue", "emails")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route(re.compile(r".*/admin/(css|js|img)/.*"), serve_admin_static)
            log_in(page, server_url, "/admin/django_jobqueue/job/overview/")

            # 1. Pause the mail queue, saying why.
            row = page.locator("tr[data-queue=emails]")
            row.locator("input[name=reason]").fill("mail provider outage")
            row.locator("button", has_text="Pause").click()
            page.wait_for_url("**/overview/")
            assert "Paused queue 'emails'" in page.inner_text(".messagelist")
            assert "emails" in db(paused_queues)

            # 2. Search the dead letters for the error, select all N matching.
            page.goto(f"{server_url}/admin/django_jobqueue/deadletter/")
            page.fill("#searchbar", "mx.example.net")
            page.press("#searchbar", "Enter")
            page.wait_for_url("**/deadletter/?q=mx.example.net")
            page.check("#action-toggle")
            page.click(".actions .question a")  # "Select all 1,200 dead letters"
            assert page.is_visible(".actions .all")
            page.select_option("select[name=action]", "requeue_selected")
            page.screenshot(path=str(images / "admin-console-select-all.png"))
            page.click("button[name=index]")

            # 3. The count first, then the confirmation.
            page.wait_for_selector(".djq-bulk-count")
            count = page.inner_text(".djq-bulk-count")
            assert "1,200 dead letters" in count and "not only this page" in count
            page.screenshot(path=str(images / "admin-console-confirm.png"))
            assert db(DeadLetter.objects.count) == LETTERS + 5, "nothing before the yes"
            page.click("input[type=submit][value^='Yes']")
            page.wait_for_selector(".messagelist .success")
            assert "Requeued 1,200 dead letters in 3 batches." in page.inner_text(".messagelist")
            assert db(DeadLetter.objects.count) == 5, "the other cause's letters are kept"

            # 4. The jobs wait in the paused queue; the list shows them and the actions.
            page.goto(f"{server_url}/admin/django_jobqueue/job/?queue=emails&status__exact=queued")
            page.check("#action-toggle")
            page.screenshot(path=str(images / "admin-console-jobs-1280.png"))
            assert "Select all 1200 jobs" in page.inner_text(".actions .question")
            assert db(Job.objects.filter(queue="emails", status="queued").count) == LETTERS

            # 5. Resume: the worker runs them.
            page.goto(f"{server_url}/admin/django_jobqueue/job/overview/")
            resumed_at = timezone.now()
            page.locator("tr[data-queue=emails] button", has_text="Resume").click()
            page.wait_for_url("**/overview/")
            assert "Resumed queue 'emails'" in page.inner_text(".messagelist")
        finally:
            browser.close()

    wait_until(
        lambda: Job.objects.filter(queue="emails", status="completed").count() == LETTERS,
        timeout=120,
    )
    first_start = Job.objects.filter(queue="emails").order_by("started_at").first()
    assert first_start is not None and first_start.started_at >= resumed_at, (
        "no job of the paused queue started before the resume"
    )
    assert "outcome=completed" in worker_processes.log(worker)
    assert LogEntry.objects.filter(change_message__startswith="Requeued").count() == LETTERS
    assert LogEntry.objects.filter(change_message__startswith="Paused queue").count() == 1
    assert LogEntry.objects.filter(change_message__startswith="Resumed queue").count() == 1
