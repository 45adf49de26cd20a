"""The admin lists at a laptop's width (1280 px) in a real headless browser: every column of
the job and dead-letter lists fits, with no horizontal scroll, long values cut with the whole
value on hover.

``DJQ_SCREENSHOTS=1`` also saves the lists to ``docs/img/`` (``admin-jobs-1280.png``,
``admin-dead-letters-1280.png``); otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobqueue.models import DeadLetter, Job
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

LONG_NAME = "shop.integrations.partner_api.jobs.synchronise_every_order_of_the_account"


def seed() -> None:
    now = timezone.now()
    statuses = ["queued", "running", "completed", "failed"]
    Job.objects.bulk_create(
        Job(
            job_id=f"{index:04d}" + "5f0c9d2e8a7b4c61a3e2d9f08b7c6a5e4d3c2b1a0" * 2,
            name=LONG_NAME if index % 2 else "shop.jobs.send_welcome_email",
            queue="partner-integrations" if index % 3 else "default",
            args=[index],
            status=statuses[index % 4],
            attempts=index % 4,
            max_attempts=5,
            result_ttl=3600,
            enqueued_at=now - timedelta(days=index // 29, minutes=index, seconds=2),
            started_at=None if index % 4 == 0 else now - timedelta(minutes=index),
            finished_at=now - timedelta(minutes=index) + timedelta(seconds=3)
            if index % 4 >= 2
            else None,
        )
        for index in range(30)
    )
    # Running jobs report progress: a long message, and a count without a total.
    for index, job in enumerate(Job.objects.filter(status="running").order_by("pk")):
        job.progress = {
            "current": index * 7,
            "total": None if index % 3 == 2 else 60,
            "message": "rendering the monthly report for every account " * 3,
        }
        job.save(update_fields=["progress"])
    DeadLetter.objects.bulk_create(
        DeadLetter(
            job_id=f"letter-{index}-" + "ab" * 40,
            name=LONG_NAME,
            queue="partner-integrations",
            args=[index],
            max_attempts=5,
            result_ttl=3600,
            attempts=5,
            error="PartnerAPIError: the partner answered 503 Service Unavailable " * 20
            + "\nmore detail\n" * 1000,
            traceback="Traceback (most recent call last):\n" * 2000,
            enqueued_at=now - timedelta(hours=1),
        )
        for index in range(10)
    )


@pytest.mark.django_db(transaction=True)
def test_the_lists_fit_1280_pixels(server_url, django_user_model, tmp_path):  # noqa: F811
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    seed()
    images = IMAGES if SCREENSHOTS else tmp_path
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.route(re.compile(r".*/admin/(css|js|img)/.*"), serve_admin_static)
            log_in(page, server_url, "/admin/django_jobqueue/job/")
            assert page.is_visible("#nav-sidebar"), "measured with the sidebar open"
            assert page.is_visible("#changelist-filter"), "measured with the filters shown"
            for path, image, columns in [
                (
                    "job/",
                    "admin-jobs-1280.png",
                    ["job_id", "status_display", "name", "queue", "attempts_display", "started"],
                ),
                ("deadletter/", "admin-dead-letters-1280.png", ["job_id", "error_line"]),
            ]:
                page.goto(f"{server_url}/admin/django_jobqueue/{path}")
                page.screenshot(path=str(images / image))
                results = page.locator("#changelist .results")
                scroll, width = results.evaluate("el => [el.scrollWidth, el.clientWidth]")
                assert scroll <= width, f"{path}: the list scrolls sideways ({scroll} > {width})"
                for column in columns:
                    cell = page.locator(f"#result_list tbody tr:first-child .field-{column}")
                    box = cell.bounding_box()
                    assert box is not None and box["x"] + box["width"] <= 1280, column
                long_cell = page.locator("#result_list td.field-name span[title]").first
                assert long_cell.get_attribute("title") == LONG_NAME
        finally:
            browser.close()
