"""The example project end to end: its own dev server and worker as subprocesses, on a
temporary SQLite database (and Redis when REDIS_URL is set), driven over HTTP."""

from __future__ import annotations

import http.cookiejar
import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import django
import pytest

from tests.conftest import ROOT, free_port, wait_until

pytestmark = pytest.mark.subprocess

STARTUP_TIMEOUT = 60.0
JOB_TIMEOUT = 30.0


@dataclass
class Example:
    base: str
    database: Path
    worker_log: Path
    cookies: http.cookiejar.CookieJar = field(default_factory=http.cookiejar.CookieJar)
    env: dict[str, str] = field(default_factory=dict)

    def shell(self, code: str) -> str:
        """Run ``code`` in the example's ``manage.py shell``; the last line it printed."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.stdout.strip().splitlines()[-1]  # Django 6 prints its auto-imports first

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        *,
        csrf: bool = True,
    ):
        """``(status, parsed JSON or text)`` of one request, with the session's cookies and,
        unless ``csrf=False``, the CSRF token in ``X-CSRFToken``, as the home page sends it."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        url = path if path.startswith("http") else self.base + path
        request = urllib.request.Request(url, data=data, method=method)
        token = next((c.value for c in self.cookies if c.name == "csrftoken"), None)
        if csrf and token:
            request.add_header("X-CSRFToken", token)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        try:
            with opener.open(request, timeout=40) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
            exc.close()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def job(self, url: str) -> dict[str, Any]:
        status, answer = self.call("GET", url)
        assert status == 200, answer
        return answer

    def wait_for_job(self, url: str, *statuses: str) -> dict[str, Any]:
        return wait_until(
            lambda: (job := self.job(url))["status"] in statuses and job,
            timeout=JOB_TIMEOUT,
            interval=0.1,
        )

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.database) as db:
            return db.execute(query, params).fetchall()

    def jobs_written(self) -> list[tuple[Any, ...]]:
        """How many jobs there are, but the ticks the workers enqueue for the schedule."""
        return self.sql(
            "SELECT count(*) FROM django_jobqueue_job WHERE job_id NOT LIKE 'schedule:%'"
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    tmp = tmp_path_factory.mktemp("example")
    database = tmp / "example.sqlite3"
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="example_project.settings",
        DATABASE_URL=f"sqlite:///{database}",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        REDIS_PREFIX=f"djq-example-test-{os.getpid()}",
    )
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run(
        [*manage, "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    server_log, worker_log = tmp / "server.log", tmp / "worker.log"
    with server_log.open("wb") as server_out, worker_log.open("wb") as worker_out:
        server = subprocess.Popen(
            [*manage, "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=server_out,
            stderr=subprocess.STDOUT,
        )
        worker = subprocess.Popen(
            [*manage, "runjobworker", "--concurrency", "4"],
            cwd=ROOT,
            env=env,
            stdout=worker_out,
            stderr=subprocess.STDOUT,
        )
    running = Example(f"http://127.0.0.1:{port}", database, worker_log, env=env)
    try:

        def answers() -> bool:
            assert server.poll() is None, server_log.read_text()
            assert worker.poll() is None, worker_log.read_text()
            if "worker started" not in worker_log.read_text():
                return False
            try:
                return running.call("GET", "/")[0] == 200  # and the CSRF cookie
            except OSError:
                return False

        wait_until(answers, timeout=STARTUP_TIMEOUT, interval=0.1)
        yield running
    finally:
        stop(server)
        stop(worker)


def test_home_page_has_a_button_per_pattern(example):
    mode = "notifications=on" if os.environ.get("REDIS_URL") else "notifications=off (polling)"
    assert mode in example.worker_log.read_text()
    status, html = example.call("GET", "/")
    assert status == 200
    assert any(cookie.name == "csrftoken" for cookie in example.cookies)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert token and token.group(1)
    forms = dict(re.findall(r'<form data-url="([^"]+)" id="([^"]+)">', html))
    assert forms == {
        "/api/process": "process",
        "/api/signup": "signup",
        "/api/reports": "report",
        "/api/flaky": "flaky",
        "/api/poison": "poison",
        "/api/schedule": "schedule",
        "/api/exports": "export",
        "/api/partner-calls": "partner",
        "/api/crunch": "crunch",
        "/api/import-orders": "import",
        "/api/notify-partner": "notify",
        "/api/reindex": "reindex",
        "/api/workflow": "workflow",
    }
    for form in forms.values():
        assert f'<pre class="result" id="{form}-result"' in html
    assert 'data-url="/api/process-async"' in html
    assert "white-space: pre-wrap" in html and "overflow-wrap: anywhere" in html


def test_posts_without_the_csrf_token_are_refused(example):
    before = example.jobs_written()
    status, _ = example.call("POST", "/api/process", {"text": "hello"}, csrf=False)
    assert status == 403
    assert example.jobs_written() == before


# -- API gateway -----------------------------------------------------------------------------


def test_gateway_answers_with_the_result(example):
    status, answer = example.call("POST", "/api/process", {"text": "hello queue world"})
    assert status == 200, answer
    assert answer["result"]["words"] == 3 and answer["result"]["longest_word"] == "hello"


def test_gateway_times_out_with_504_and_the_job_goes_on(example):
    status, answer = example.call(
        "POST", "/api/process", {"text": "slow", "delay": 2, "timeout": 0.3}
    )
    assert status == 504, answer
    assert "keeps running" in answer["error"]
    job = example.wait_for_job(answer["status_url"], "completed")
    assert job["id"] == answer["job_id"] and job["result"]["words"] == 1


def test_async_gateway_answers_with_the_result(example):
    status, answer = example.call("POST", "/api/process-async", {"text": "async queue"})
    assert status == 200, answer
    assert answer == {"result": answer["result"], "view": "async"}
    assert answer["result"]["words"] == 2 and answer["result"]["longest_word"] == "async"
    status, answer = example.call("POST", "/api/process-async", {"text": "x", "fail": True})
    assert status == 500 and "the analysis failed" in answer["error"]
    status, answer = example.call("POST", "/api/process-async", {"text": 42})
    assert status == 400 and "'text' must be a non-empty string" in answer["error"]


def test_gateway_failure_is_a_500_with_the_error(example):
    status, answer = example.call("POST", "/api/process", {"text": "boom", "fail": True})
    assert status == 500, answer
    assert answer["error"] == "RuntimeError: the analysis failed, as asked with fail=true"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "'text' is required"),
        (b'{"text": 42}', "'text' must be a non-empty string"),
        (b'{"text": "x", "timeout": 0}', "'timeout' must be between"),
        (b'{"text": "x", "delay": "soon"}', "'delay' must be a number"),
        (b'{"text": "x", "fail": "yes"}', "'fail' must be true or false"),
    ],
)
def test_gateway_rejects_bad_input(example, body, message):
    before = example.jobs_written()
    status, answer = example.call("POST", "/api/process", raw=body)
    assert status == 400 and message in answer["error"], answer
    assert example.jobs_written() == before


def test_wrong_method_is_a_405(example):
    status, answer = example.call("GET", "/api/process")
    assert status == 405 and answer == {"error": "use POST, not GET"}


# -- background report -----------------------------------------------------------------------


def test_report_is_accepted_then_polled_until_completed(example):
    status, answer = example.call(
        "POST", "/api/reports", {"kind": "signups", "days": 3, "delay": 1}
    )
    assert status == 202, answer
    report_id, url = answer["id"], answer["url"]
    assert url.startswith(f"{example.base}/api/reports/") and report_id not in url
    seen = set()

    def done() -> dict[str, Any] | None:
        status, state = example.call("GET", url)
        assert status == 200
        seen.add(state["status"])
        return state if state["status"] == "completed" else None

    state = wait_until(done, timeout=JOB_TIMEOUT, interval=0.1)
    assert seen & {"queued", "running"}, "the client saw the report before it was ready"
    assert state["id"] == report_id
    assert state["report"]["kind"] == "signups" and state["report"]["days"] == 3
    # The bare id is no status URL.
    assert example.call("GET", f"/api/reports/{report_id}")[0] == 404


def test_report_errors(example):
    assert example.call("GET", "/api/reports/no-such-report")[0] == 404
    status, answer = example.call("POST", "/api/reports", {"kind": "sales"})
    assert status == 400 and "'kind' must be one of" in answer["error"]
    status, answer = example.call("POST", "/api/reports", {"days": 0})
    assert status == 400 and "'days'" in answer["error"]
    # A job that is not a report is not found through the report URL, by id or by token.
    status, answer = example.call("POST", "/api/flaky")
    assert example.call("GET", f"/api/reports/{answer['job_id']}")[0] == 404
    token = answer["status_url"].rsplit("/", 1)[1]
    assert example.call("GET", f"/api/reports/{token}")[0] == 404


# -- sign-up ---------------------------------------------------------------------------------


def test_signup_creates_the_user_and_the_email_is_sent(example):
    body = {"username": "ada", "email": "ada@example.com", "password": "s3cret-pass"}
    status, answer = example.call("POST", "/api/signup", body)
    assert status == 201, answer
    assert answer["welcome_email_job"] == f"welcome-email-{answer['user_id']}"
    job = example.wait_for_job(answer["status_url"], "completed")
    assert job["result"] == {"to": "ada@example.com"} and job["queue"] == "emails"
    assert "Subject: Welcome to the example shop" in example.worker_log.read_text()
    status, answer = example.call("POST", "/api/signup", body)
    assert status == 400 and "taken" in answer["error"]


def test_signup_failure_rolls_back_the_user_and_the_job(example):
    body = {"username": "bob", "email": "bob@example.com", "password": "s3cret-pass"}
    status, answer = example.call("POST", "/api/signup", {**body, "simulate_failure": True})
    assert status == 500, answer
    assert example.call("GET", answer["rolled_back"]["status_url"])[0] == 404
    assert example.sql("SELECT count(*) FROM auth_user WHERE username = 'bob'") == [(0,)]
    assert example.call("POST", "/api/signup", body)[0] == 201, "nothing was left behind"


def test_signup_rejects_bad_input(example):
    status, answer = example.call(
        "POST", "/api/signup", {"username": "eve", "email": "nope", "password": "x"}
    )
    assert status == 400 and "'email'" in answer["error"]
    assert example.call("POST", "/api/signup", {"username": "eve"})[0] == 400
    assert example.sql("SELECT count(*) FROM auth_user WHERE username = 'eve'") == [(0,)]


# -- retries and dead letters ------------------------------------------------------------------


def test_flaky_job_fails_twice_then_succeeds(example):
    status, answer = example.call("POST", "/api/flaky")
    assert status == 202, answer
    job = example.wait_for_job(answer["status_url"], "completed", "failed")
    assert job["status"] == "completed" and job["attempts"] == 3
    assert job["result"] == {"order": answer["order"], "charged": True, "calls": 3}
    log = example.worker_log.read_text()
    assert f"id={answer['job_id']}" in log and "retry in" in log


def test_a_burst_of_reindex_clicks_runs_once_with_the_last_reason(example):
    answers = [example.call("POST", "/api/reindex", {"reason": f"edit {n}"}) for n in range(5)]
    assert {status for status, _ in answers} == {202}
    assert len({answer["job_id"] for _, answer in answers}) == 1
    assert [answer["created"] for _, answer in answers] == [True, False, False, False, False]
    job = example.wait_for_job(answers[0][1]["status_url"], "completed", "failed")
    assert job["result"] == {"shop": "main", "reason": "edit 4"} and job["attempts"] == 1


def test_poison_job_ends_as_a_dead_letter(example):
    status, answer = example.call("POST", "/api/poison", {"url": "https://example.com/bad.xml"})
    assert status == 202, answer
    job = example.wait_for_job(answer["status_url"], "failed")
    assert job["attempts"] == 3
    assert job["error"] == (
        "ValueError: cannot parse the feed at https://example.com/bad.xml: it is not XML"
    )
    letters = example.sql(
        "SELECT name, attempts, traceback FROM django_jobqueue_deadletter WHERE job_id = ?",
        answer["job_id"],
    )
    assert len(letters) == 1
    name, attempts, trace = letters[0]
    assert (name, attempts) == ("example_project.shop.jobs.import_feed", 3)
    assert "raise ValueError" in trace
    assert answer["dead_letters"] == f"{example.base}/admin/django_jobqueue/deadletter/"


def test_workflow_button_runs_a_chain_each_job_after_the_one_before(example):
    status, answer = example.call("POST", "/api/workflow", {"url": "https://example.com/a"})
    assert status == 202, answer
    fetch, parse, store = answer["job_ids"]
    assert answer["statuses"] == ["queued", "blocked", "blocked"]
    job = example.wait_for_job(answer["status_url"], "completed", "failed")
    assert job["id"] == store and job["status"] == "completed", job
    assert job["result"] == {
        "url": "https://example.com/a", "words": 6, "stored": True, "after": parse,
    }  # fmt: skip
    rows = example.sql(
        "SELECT job_id, started_at, finished_at FROM django_jobqueue_job WHERE job_id IN (?, ?, ?)",
        fetch, parse, store,
    )  # fmt: skip
    times = {job_id: (started, finished) for job_id, started, finished in rows}
    for before, after in pairwise((fetch, parse, store)):
        assert times[before][1] <= times[after][0]  # finished before the next one started
    status, answer = example.call("POST", "/api/workflow", {"url": 42})
    assert status == 400 and "url" in answer["error"]


# -- the worker's controls ----------------------------------------------------------------------


def test_schedule_button_shows_the_last_tick_and_its_job(example):
    name = "example_project.shop.jobs.refresh_rates"

    def ticked() -> dict[str, Any] | None:
        status, answer = example.call("POST", "/api/schedule")
        assert status == 200, answer
        assert answer["schedule"] == name and answer["cron"] == "* * * * * */10"
        return answer if "status_url" in answer else None

    answer = wait_until(ticked, timeout=JOB_TIMEOUT, interval=0.5)
    assert answer["job_id"].startswith(f"schedule:{name}:")
    assert answer["admin"] == f"{example.base}/admin/django_jobqueue/schedule/"
    job = example.wait_for_job(answer["status_url"], "completed")
    assert job["id"] == answer["job_id"] and "refreshed_at" in job["result"]
    assert example.sql("SELECT job FROM django_jobqueue_schedule WHERE name = ?", name) == [(name,)]


def test_export_is_cancelled_while_it_runs(example):
    status, answer = example.call("POST", "/api/exports")
    assert status == 202, answer
    example.wait_for_job(answer["status_url"], "running")
    status, cancelled = example.call("POST", answer["cancel_url"])
    assert (status, cancelled) == (200, {"job_id": answer["job_id"], "cancelled": True})
    job = example.wait_for_job(answer["status_url"], "cancelled", "completed", "failed")
    assert job["status"] == "cancelled" and job["attempts"] == 1
    assert "result" not in job  # a cancelled run's result is not stored
    rows = example.sql(
        "SELECT progress FROM django_jobqueue_job WHERE job_id = ?", answer["job_id"]
    )
    progress = json.loads(rows[0][0])
    assert progress["total"] == 200 and progress["current"] < 200  # it stopped half-way
    # A finished job is left as it is; a forged token is no job.
    status, again = example.call("POST", answer["cancel_url"])
    assert (status, again["cancelled"]) == (200, False)
    assert example.call("POST", "/api/jobs/forged/cancel")[0] == 404


def test_partner_calls_run_one_at_a_time_under_their_limit(example):
    status, answer = example.call("POST", "/api/partner-calls")
    assert status == 202, answer
    assert answer["status_url"] == answer["status_urls"][-1] and len(answer["jobs"]) == 3
    jobs = [example.wait_for_job(url, "completed", "failed") for url in answer["status_urls"]]
    assert [job["status"] for job in jobs] == ["completed"] * 3, jobs
    assert sorted(job["result"]["call"] for job in jobs) == [1, 2, 3]
    assert {job["result"]["running_at_once"] for job in jobs} == {1}
    windows = sorted(
        (datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"]))
        for job in jobs
    )
    for (_, first_end), (second_start, _) in pairwise(windows):
        assert first_end <= second_start, windows  # never two at once
    keys = example.sql(
        "SELECT DISTINCT limit_key FROM django_jobqueue_job WHERE name LIKE '%.call_partner'"
    )
    assert keys == [("partner-api",)]


def test_time_limit_stops_a_long_job(example):
    status, answer = example.call("POST", "/api/crunch")
    assert status == 202, answer
    job = example.wait_for_job(answer["status_url"], "failed", "completed")
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"] == (
        "TimeLimitExceeded: the attempt ran longer than its time_limit of 1s"
    ), job["error"]
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    assert (finished - started).total_seconds() < 4, "stopped well before its 5 s of work"
    letters = "SELECT count(*) FROM django_jobqueue_deadletter WHERE job_id = ?"
    assert example.sql(letters, answer["job_id"]) == [(1,)]


def test_atomic_import_keeps_no_write_of_its_failed_attempt(example):
    status, answer = example.call("POST", "/api/import-orders")
    assert status == 202, answer
    job = example.wait_for_job(answer["status_url"], "completed", "failed")
    assert job["status"] == "completed" and job["attempts"] == 2, job
    assert job["result"] == {"batch": answer["batch"], "orders": 3, "attempt": 2}
    orders = "SELECT number FROM shop_order WHERE batch = ? ORDER BY number"
    assert example.sql(orders, answer["batch"]) == [(1,), (2,), (3,)]
    assert "warehouse hung up" in example.worker_log.read_text()


def test_an_error_outside_retry_on_fails_at_once(example):
    status, answer = example.call("POST", "/api/notify-partner")
    assert status == 202, answer
    job = example.wait_for_job(answer["status_url"], "failed", "completed")
    assert job["status"] == "failed" and job["attempts"] == 2, job  # of max_attempts=5
    assert job["error"].startswith(f"ValueError: the partner refused order {answer['order']}"), job[
        "error"
    ]
    assert "not retried" in job["error"]
    letters = "SELECT attempts FROM django_jobqueue_deadletter WHERE job_id = ?"
    assert example.sql(letters, answer["job_id"]) == [(2,)]


# -- status URLs are signed ----------------------------------------------------------------


def test_a_guessed_job_id_gets_404(example):
    body = {"username": "grace", "email": "grace@example.com", "password": "s3cret-pass"}
    status, answer = example.call("POST", "/api/signup", body)
    assert status == 201, answer
    job_id = answer["welcome_email_job"]
    assert job_id == f"welcome-email-{answer['user_id']}"  # guessable
    example.wait_for_job(answer["status_url"], "completed")  # the job exists
    for guess in (job_id, f"welcome-email-{answer['user_id'] - 1}", "welcome-email-1"):
        status, refused = example.call("GET", f"/api/jobs/{guess}")
        assert status == 404 and refused == {"error": "no such job (or its result expired)"}
    token = answer["status_url"].rsplit("/", 1)[1]
    value, _, signature = token.rpartition(":")
    forged = f"{value}:{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    assert example.call("GET", f"/api/jobs/{forged}")[0] == 404
    assert example.call("GET", f"/api/jobs/{token}")[0] == 200


# -- the home page in a real browser ---------------------------------------------------------


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


@pytest.fixture
def page(example):
    """A Chromium page (Debian's, driven by Playwright) on the example's home page."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(example.base + "/")
            yield page
        finally:
            browser.close()


def result_of(page, form: str, text: str, timeout: float = JOB_TIMEOUT) -> str:
    """The text of a form's result box, once it contains ``text`` (at most ``timeout`` s)."""
    box = page.locator(f"#{form}-result")
    box.filter(has_text=text).wait_for(timeout=timeout * 1000)
    return box.inner_text()


@pytest.mark.browser
def test_buttons_show_their_results_in_the_browser(example, page):
    # Enqueue and wait, sync and async: the result appears under the buttons.
    page.fill("#process input[name=text]", "clicked in a browser")
    page.click("#process button[name=analyse]")
    shown = result_of(page, "process", '"words": 4')
    assert "POST /api/process: HTTP 200" in shown and '"longest_word": "clicked"' in shown
    page.click("#process button[name=async]")
    shown = result_of(page, "process", '"view": "async"')
    assert "POST /api/process-async: HTTP 200" in shown and '"words": 4' in shown

    # The report: 202, then the page polls its status URL until it is completed.
    page.click("#report button[name=signups]")
    shown = result_of(page, "report", "status: queued")
    assert "POST /api/reports: HTTP 202" in shown
    shown = result_of(page, "report", '"generated_at"')
    assert re.search(r"status: queued .*→ completed", shown), shown
    assert '"kind": "signups"' in shown

    # Sign-up: the welcome email job is followed until it has been sent; the next name is free.
    page.fill("#signup input[name=username]", "browser")
    page.fill("#signup input[name=email]", "browser@example.com")
    page.click("#signup button[name=signup]")
    shown = result_of(page, "signup", '"to": "browser@example.com"')
    assert "POST /api/signup: HTTP 201" in shown
    assert page.input_value("#signup input[name=username]") == "browser2"
    assert page.input_value("#signup input[name=email]") == "browser2@example.com"
    page.click("#signup button[name=rollback]")
    shown = result_of(page, "signup", "HTTP 404")
    assert "POST /api/signup: HTTP 500" in shown and "rolled_back" in shown
    assert example.sql("SELECT count(*) FROM auth_user WHERE username = 'browser2'") == [(0,)]

    # The poison job: three attempts, then failed, and a dead letter in the admin.
    page.click("#poison button[name=poison]")
    shown = result_of(page, "poison", "failed (attempt 3)")
    assert "cannot parse the feed at https://example.com/feed.xml" in shown
    assert page.locator("#poison-result.error").count() == 1
    job_id = re.search(r'"id": "([0-9a-f]+)"', shown).group(1)
    letters = "SELECT count(*) FROM django_jobqueue_deadletter WHERE job_id = ?"
    assert example.sql(letters, job_id) == [(1,)]
    if os.environ.get("DJQ_SCREENSHOTS") == "1":
        page.screenshot(path=str(ROOT / "docs" / "img" / "example-home.png"), full_page=True)


@pytest.mark.browser
def test_control_buttons_show_their_outcomes_in_the_browser(example, page):
    for form in ("schedule", "export", "partner", "crunch", "import", "notify"):
        page.click(f"#{form} button[name={form}]")  # all at once: each form follows its job
    shown = result_of(page, "schedule", '"cron": "* * * * * */10"')
    assert "POST /api/schedule: HTTP 200" in shown
    shown = result_of(page, "export", "cancelled (attempt 1)")
    assert re.search(r"POST cancel URL: HTTP 200 .*\"cancelled\":true", shown), shown
    assert page.locator("#export-result.error").count() == 1
    shown = result_of(page, "partner", "completed (attempt 1)")
    assert '"running_at_once": 1' in shown and '"call": 3' in shown
    shown = result_of(page, "crunch", "failed (attempt 1)")
    assert "ran longer than its time_limit of 1s" in shown
    shown = result_of(page, "import", "completed (attempt 2)")
    assert '"orders": 3' in shown
    shown = result_of(page, "notify", "failed (attempt 2)")
    assert "the partner refused order" in shown


def test_a_task_of_djangos_tasks_framework_runs_next_to_the_jobs(example):
    framework = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    if importlib.util.find_spec(framework) is None:
        pytest.skip("needs Django 6 or the django-tasks backport")
    result_id = example.shell(
        "from example_project.shop.tasks import send_receipt; "
        "print(send_receipt.enqueue('ada@example.com', 42).id)"
    ).strip()

    def finished():  # by id: the example's status URLs take a signed token, not a task id
        rows = example.sql(
            "SELECT j.status, r.result FROM django_jobqueue_job j LEFT JOIN "
            "django_jobqueue_jobresult r ON r.job_id = j.id WHERE j.job_id = ?",
            result_id,
        )
        return bool(rows) and rows[0][0] in ("completed", "failed") and rows[0]

    status, result = wait_until(finished, timeout=JOB_TIMEOUT)
    job = {"status": status, "result": json.loads(result) if result else None}
    assert (job["status"], job["result"]) == ("completed", {"sent_to": "ada@example.com"})
    assert "Your receipt" in example.worker_log.read_text()
    status = example.shell(
        "from example_project.shop.tasks import send_receipt; "
        f"print(send_receipt.get_result({result_id!r}).status)"
    ).strip()
    assert status == "SUCCESSFUL"


# -- live progress in a real browser, over daphne ---------------------------------------------

RECORD_BAR = """() => {
  window.barValues = [];
  const bar = document.getElementById("live-bar");
  new MutationObserver(() => {
    if (bar.hasAttribute("value")) window.barValues.push(Number(bar.getAttribute("value")));
  }).observe(bar, { attributes: true, attributeFilter: ["value"] });
}"""


def follow_live_report(page, *, mode: str, screenshot: bool = False) -> str:
    """Click the live report's button, see its bar move over ``mode`` and its result appear."""
    page.evaluate(RECORD_BAR)
    page.click("#live button[name=render]")
    page.wait_for_function(
        "() => (window.barValues || []).some((v) => v > 4 && v < 16)", timeout=JOB_TIMEOUT * 1000
    )
    if screenshot:
        page.locator("#live-label").filter(has_text="rendering page").wait_for()
        top = page.locator("h2", has_text="5. Live progress").bounding_box()
        bottom = page.locator("#live-result").bounding_box()
        page.screenshot(
            path=str(ROOT / "docs" / "img" / "live-progress.png"),
            clip={
                "x": 0,
                "y": top["y"] - 8,
                "width": 1280,
                "height": bottom["y"] + bottom["height"] - top["y"] + 16,
            },
        )
    shown = result_of(page, "live", '"pages": 20')
    assert "POST /api/live-reports: HTTP 202" in shown and "status: completed" in shown
    values = page.evaluate("window.barValues")
    assert values[-1] == 20, values
    assert values == sorted(values), values  # it only moves forward
    assert len({v for v in values if 0 < v < 20}) >= 2, f"the bar did not move: {values}"
    assert page.get_attribute("#live-progress", "data-mode") == mode
    assert "20 / 20 rendering page 20 of 20" in page.inner_text("#live-label")
    return shown


@pytest.mark.browser
def test_live_report_bar_moves_over_a_websocket_and_its_result_appears(example, page):
    follow_live_report(page, mode="websocket", screenshot=os.environ.get("DJQ_SCREENSHOTS") == "1")
    assert (
        "live-report-"
        in example.sql(
            "SELECT job_id FROM django_jobqueue_job WHERE name LIKE '%render_report' LIMIT 1"
        )[0][0]
    )


@pytest.mark.browser
def test_live_report_without_websockets_polls_the_status_view(example, page):
    page.evaluate("() => { window.WebSocket = undefined; }")
    follow_live_report(page, mode="polling")


def test_watch_js_and_the_status_view_are_served(example):
    status, script = example.call("GET", "/static/django_jobqueue/watch.js")
    assert status == 200 and "DjangoJobqueue.watch = watch" in script
    status, answer = example.call("POST", "/api/live-reports", {"pages": 1})
    assert status == 202, answer
    assert answer["status_url"].startswith(f"{example.base}/jobqueue/jobs/")
    state = wait_until(
        lambda: (s := example.job(answer["status_url"]))["status"] == "completed" and s,
        timeout=30,
    )
    assert state["result"]["pages"] == 1
    assert state["progress"]["current"] == 1 and state["progress"]["total"] == 1
    assert example.call("GET", "/jobqueue/jobs/forged/")[0] == 403
    status, answer = example.call("POST", "/api/live-reports", {"pages": 0})
    assert status == 400 and "'pages'" in answer["error"]
