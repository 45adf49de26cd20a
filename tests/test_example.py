"""The example project end to end: its own dev server and worker as subprocesses, on a
temporary SQLite database (and Redis when REDIS_URL is set), driven over HTTP."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.subprocess

STARTUP_TIMEOUT = 60.0
JOB_TIMEOUT = 30.0


@dataclass
class Example:
    base: str
    database: Path
    worker_log: Path
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

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        """``(status, parsed JSON or text)`` of one request."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=40) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
            exc.close()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def job(self, job_id: str) -> dict[str, Any]:
        status, answer = self.call("GET", f"/api/jobs/{job_id}")
        assert status == 200, answer
        return answer

    def wait_for_job(self, job_id: str, *statuses: str) -> dict[str, Any]:
        return poll(lambda: (job := self.job(job_id))["status"] in statuses and job)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.database) as db:
            return db.execute(query, params).fetchall()


def poll(predicate: Callable[[], Any], timeout: float = JOB_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    running = Example(f"http://127.0.0.1:{port}", database, worker_log, env)
    try:

        def answers() -> bool:
            assert server.poll() is None, server_log.read_text()
            assert worker.poll() is None, worker_log.read_text()
            if "worker started" not in worker_log.read_text():
                return False
            try:
                return running.call("GET", "/")[0] == 200
            except OSError:
                return False

        poll(answers, timeout=STARTUP_TIMEOUT)
        yield running
    finally:
        stop(server)
        stop(worker)


def test_home_page_says_what_to_try(example):
    mode = "notifications=on" if os.environ.get("REDIS_URL") else "notifications=off (polling)"
    assert mode in example.worker_log.read_text()
    status, html = example.call("GET", "/")
    assert status == 200
    for line in [
        f"curl -s -X POST {example.base}/api/process",
        f"curl -s -X POST {example.base}/api/reports",
        f"curl -s -X POST {example.base}/api/signup",
        f"curl -s -X POST {example.base}/api/flaky",
        f"curl -s -X POST {example.base}/api/poison",
    ]:
        assert line in html


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
    job = example.wait_for_job(answer["job_id"], "completed")
    assert job["result"]["words"] == 1


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
    before = example.sql("SELECT count(*) FROM django_jobqueue_job")
    status, answer = example.call("POST", "/api/process", raw=body)
    assert status == 400 and message in answer["error"], answer
    assert example.sql("SELECT count(*) FROM django_jobqueue_job") == before


def test_wrong_method_is_a_405(example):
    status, answer = example.call("GET", "/api/process")
    assert status == 405 and answer == {"error": "use POST, not GET"}


# -- background report -----------------------------------------------------------------------


def test_report_is_accepted_then_polled_until_completed(example):
    status, answer = example.call(
        "POST", "/api/reports", {"kind": "signups", "days": 3, "delay": 1}
    )
    assert status == 202, answer
    report_id = answer["id"]
    assert answer["url"] == f"{example.base}/api/reports/{report_id}"
    seen = set()

    def done() -> dict[str, Any] | None:
        status, state = example.call("GET", f"/api/reports/{report_id}")
        assert status == 200
        seen.add(state["status"])
        return state if state["status"] == "completed" else None

    state = poll(done)
    assert seen & {"queued", "running"}, "the client saw the report before it was ready"
    assert state["report"]["kind"] == "signups" and state["report"]["days"] == 3


def test_report_errors(example):
    assert example.call("GET", "/api/reports/no-such-report")[0] == 404
    status, answer = example.call("POST", "/api/reports", {"kind": "sales"})
    assert status == 400 and "'kind' must be one of" in answer["error"]
    status, answer = example.call("POST", "/api/reports", {"days": 0})
    assert status == 400 and "'days'" in answer["error"]
    # A job that is not a report is not found through the report URL.
    status, answer = example.call("POST", "/api/flaky")
    assert example.call("GET", f"/api/reports/{answer['job_id']}")[0] == 404


# -- sign-up ---------------------------------------------------------------------------------


def test_signup_creates_the_user_and_the_email_is_sent(example):
    body = {"username": "ada", "email": "ada@example.com", "password": "s3cret-pass"}
    status, answer = example.call("POST", "/api/signup", body)
    assert status == 201, answer
    assert answer["welcome_email_job"] == f"welcome-email-{answer['user_id']}"
    job = example.wait_for_job(answer["welcome_email_job"], "completed")
    assert job["result"] == {"to": "ada@example.com"} and job["queue"] == "emails"
    assert "Subject: Welcome to the example shop" in example.worker_log.read_text()
    status, answer = example.call("POST", "/api/signup", body)
    assert status == 400 and "taken" in answer["error"]


def test_signup_failure_rolls_back_the_user_and_the_job(example):
    body = {"username": "bob", "email": "bob@example.com", "password": "s3cret-pass"}
    status, answer = example.call("POST", "/api/signup", {**body, "simulate_failure": True})
    assert status == 500, answer
    job_id = answer["rolled_back"]["welcome_email_job"]
    assert example.call("GET", f"/api/jobs/{job_id}")[0] == 404
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
    job = example.wait_for_job(answer["job_id"], "completed", "failed")
    assert job["status"] == "completed" and job["attempts"] == 3
    assert job["result"] == {"order": answer["order"], "charged": True, "calls": 3}
    log = example.worker_log.read_text()
    assert f"id={answer['job_id']}" in log and "retry in" in log


def test_poison_job_ends_as_a_dead_letter(example):
    status, answer = example.call("POST", "/api/poison", {"url": "https://example.com/bad.xml"})
    assert status == 202, answer
    job = example.wait_for_job(answer["job_id"], "failed")
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


def test_a_task_of_djangos_tasks_framework_runs_next_to_the_jobs(example):
    framework = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    if importlib.util.find_spec(framework) is None:
        pytest.skip("needs Django 6 or the django-tasks backport")
    result_id = example.shell(
        "from example_project.shop.tasks import send_receipt; "
        "print(send_receipt.enqueue('ada@example.com', 42).id)"
    ).strip()
    job = example.wait_for_job(result_id, "completed", "failed")
    assert (job["status"], job["result"]) == ("completed", {"sent_to": "ada@example.com"})
    assert "Your receipt" in example.worker_log.read_text()
    status = example.shell(
        "from example_project.shop.tasks import send_receipt; "
        f"print(send_receipt.get_result({result_id!r}).status)"
    ).strip()
    assert status == "SUCCESSFUL"
