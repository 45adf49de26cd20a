"""The live admin in a real headless browser, with a real worker: the job list, a job's page
and the queue overview change without a reload, and the operator's selection stays.

Twice: on a real ASGI server (daphne, a subprocess, with ``django_jobqueue.routing``), where
the list and the job page are told over ``ws/jobqueue/admin/``, and on Django's WSGI live
server (what ``runserver`` is), where they poll the JSON view.

``DJQ_SCREENSHOTS=1`` also saves the pages at 1280 px to ``docs/img/``
(``admin-jobs-live-1280.png``, ``admin-job-live-1280.png``, ``admin-overview-1280.png``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from django.db import connections

from django_jobqueue.models import Job
from tests.conftest import ROOT
from tests.test_browser import (  # noqa: F401 - server_url is a fixture
    CHROMIUM,
    CHROMIUM_ARGS,
    IMAGES,
    SCREENSHOTS,
    log_in,
    pytestmark,
    seed_history,
    serve_admin_static,
    server_url,
    sync_playwright,
)
from tests.testapp.jobs import add, progress_gates

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

STATIC = ROOT / "django_jobqueue" / "static"


def serve_package_static(route: Route) -> None:
    """``console.js``, from the package (neither server here serves static files)."""
    match = re.search(r"/static/(django_jobqueue/[^?#]+)", route.request.url)
    path = STATIC / match.group(1) if match else None
    if path is None or not path.is_file():
        route.fulfill(status=404, body="")
        return
    route.fulfill(status=200, body=path.read_bytes(), content_type="text/javascript")


def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` off this thread: inside ``sync_playwright()`` it runs an event loop,
    where Django refuses database queries."""

    def call() -> Any:
        try:
            return function(*args)
        finally:
            connections.close_all()  # this thread's own connections

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(call).result(timeout=30)


@pytest.fixture(params=["asgi", "wsgi"])
def site(request, tmp_path, transactional_db) -> Iterator[tuple[str, str]]:
    """``(base URL, the mode the pages should be in)``."""
    if request.param == "wsgi":
        yield request.getfixturevalue("server_url"), "polling"
        return
    from tests.test_watch_servers import Server

    server = Server("daphne", tmp_path, {})
    try:
        yield f"http://127.0.0.1:{server.port}", "websocket"
    finally:
        server.stop()


def cell(page: Page, job_pk: int, column: str) -> str:
    """The JS expression of a list cell of the job ``job_pk``."""
    return (
        f"document.querySelector('#result_list input.action-select[value=\"{job_pk}\"]')"
        f".closest('tr').querySelector('.field-{column}')"
    )


def wait_js(page: Page, expression: str, timeout: float = 30) -> None:
    page.wait_for_function(
        f"() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }}",
        timeout=timeout * 1000,
    )


def test_the_list_a_job_and_the_overview_change_without_a_reload(
    site, worker_processes, django_user_model, tmp_path
):
    base, mode = site
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin-pw")
    if SCREENSHOTS:
        seed_history()
    gates = tmp_path / "gates"
    gates.mkdir()
    handle = progress_gates.enqueue(str(gates), 3)
    other = add.enqueue(1, 2)
    job_pk = Job.objects.get(job_id=handle.id).pk
    other_pk = Job.objects.get(job_id=other.id).pk
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route(re.compile(r".*/static/admin/(css|js|img)/.*"), serve_admin_static)
            page.route(re.compile(r".*/static/django_jobqueue/.*"), serve_package_static)
            log_in(page, base, "/admin/django_jobqueue/job/")
            wait_js(page, f"window.djqLive.mode === '{mode}'", timeout=10)
            status = cell(page, job_pk, "status_display")
            assert page.evaluate(f"{status}.textContent.trim()") == "Queued"
            # The operator's selection and the page itself must outlive every update.
            page.check(f'#result_list input.action-select[value="{other_pk}"]')
            page.evaluate("window.notReloaded = true")

            worker_processes.start("--queue", "default")
            wait_js(page, f"{status}.textContent.includes('Running')")
            bar = f"{status}.querySelector('progress')"
            wait_js(page, f"{bar} && {bar}.value === 0")
            (gates / "1").touch()
            wait_js(page, f"{bar}.value === 1")
            (gates / "2").touch()
            wait_js(page, f"{bar}.value === 2")
            assert page.evaluate(f"{bar}.max") == 3
            finished = cell(page, other_pk, "status_display")
            wait_js(page, f"{finished}.textContent.includes('Completed')")
            assert page.is_checked(f'#result_list input.action-select[value="{other_pk}"]')
            assert page.evaluate("window.notReloaded") is True
            assert page.evaluate("window.djqLive.mode") == mode
            if SCREENSHOTS and mode == "websocket":
                page.screenshot(path=str(IMAGES / "admin-jobs-live-1280.png"))

            page.goto(f"{base}/admin/django_jobqueue/job/{job_pk}/change/")
            wait_js(page, f"window.djqLive.mode === '{mode}'", timeout=10)
            page.evaluate("window.notReloaded = true")
            field = "document.querySelector('.field-{}  .readonly').textContent"
            assert "2 / 3 passed gate 2" in page.evaluate(field.format("progress_display"))
            if SCREENSHOTS and mode == "websocket":
                page.screenshot(path=str(IMAGES / "admin-job-live-1280.png"))
            (gates / "3").touch()
            wait_js(page, f"{field.format('status_display')}.includes('Completed')")
            wait_js(page, f"{field.format('result_display')}.includes('3')")
            assert "3 / 3 passed gate 3" in page.evaluate(field.format("progress_display"))
            assert page.evaluate("window.notReloaded") is True

            page.goto(f"{base}/admin/django_jobqueue/job/overview/")
            page.evaluate("window.notReloaded = true")
            completed = "document.querySelector('tr.djq-total td.djq-count-completed')"
            before = int(page.evaluate(f"{completed}.textContent"))
            page.fill("tr[data-queue=default] input[name=reason]", "half typed")
            in_thread(add.enqueue, 2, 3)
            wait_js(page, f"{completed}.textContent.trim() === '{before + 1}'")
            assert page.evaluate("window.notReloaded") is True
            reason = page.input_value("tr[data-queue=default] input[name=reason]")
            assert reason == "half typed"
            assert page.evaluate("window.djqLive.mode") == "polling"  # the overview always polls
            if SCREENSHOTS and mode == "websocket":
                page.fill("tr[data-queue=default] input[name=reason]", "")
                page.click("#toggle-nav-sidebar")  # the table is wider than the rest
                page.screenshot(path=str(IMAGES / "admin-overview-1280.png"), full_page=True)
        finally:
            browser.close()
