"""``manage.py runjobworker``: arguments, help, errors, and the settings module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from model_bakery import baker

from tests.conftest import ROOT, wait_until
from tests.testapp.jobs import add, fails_then_succeeds, other_queue, waits_for_file
from tests.testapp.models import Execution


def _help() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "django", "runjobworker", "--help"],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_help_lists_every_option_with_defaults():
    text = _help()
    for option in ("--queue", "--concurrency", "--burst", "--name"):
        assert option in text
    assert "(default: 4 per CPU, at least 4 and at most 32)" in " ".join(text.split())
    assert "SIGTERM" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "between 1 and 512"),
        (["--concurrency", "many"], "not a whole number"),
        (["--queue", "bad queue"], "not a valid queue name"),
    ],
)
def test_bad_arguments_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("runjobworker", *args)


@pytest.mark.django_db
def test_burst_runs_the_queue_and_returns():
    handle = add.enqueue(1, 2)
    call_command("runjobworker", "--burst", "--queue", "default", stdout=StringIO())
    assert handle.refresh().result == 3


@pytest.mark.django_db
def test_burst_waits_out_the_retries_of_the_work_it_started(tmp_path):
    """Retries back off (RETRY_BACKOFF in the test settings: 0.05s to 0.2s); --burst used to
    exit with the job queued for its second attempt."""
    retried = fails_then_succeeds.enqueue(str(tmp_path / "attempts"), 2)
    scheduled = add.using(run_after=timedelta(hours=1)).enqueue(1, 1)
    call_command("runjobworker", "--burst", stdout=StringIO())
    assert (retried.refresh().status, retried.attempts, retried.result) == ("completed", 3, 3)
    assert (scheduled.refresh().status, scheduled.attempts) == ("queued", 0)


@pytest.mark.django_db
def test_burst_does_not_wait_for_retries_of_queues_it_does_not_serve():
    retry_elsewhere = baker.make_recipe(
        "tests.queued_job",
        job_id="elsewhere",
        name=other_queue.name,
        queue="other",
        attempts=1,
        run_after=timezone.now() + timedelta(seconds=30),
    )
    started = time.monotonic()
    call_command("runjobworker", "--burst", "--queue", "default", stdout=StringIO())
    assert time.monotonic() - started < 15
    retry_elsewhere.refresh_from_db()
    assert (retry_elsewhere.status, retry_elsewhere.attempts) == ("queued", 1)


def test_help_says_burst_waits_for_retries():
    text = " ".join(_help().split())
    assert "waits out a retry's backoff" in text


def test_version_names_django_jobqueue_and_django():
    import django

    import django_jobqueue

    proc = subprocess.run(
        [sys.executable, "-m", "django", "runjobworker", "--version"],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = f"django-jobqueue {django_jobqueue.__version__} (Django {django.get_version()})"
    assert proc.stdout.strip() == expected


def test_help_explains_reload_and_version():
    text = " ".join(_help().split())
    assert "--reload" in text and "For development: restart the worker when a Python file" in text
    assert "stops the worker gracefully first" in text
    assert "Show django-jobqueue's version and Django's" in text


def test_reload_refuses_burst():
    with pytest.raises(CommandError, match="--reload and --burst do not go together"):
        call_command("runjobworker", "--reload", "--burst")


def _start_reloader(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start a real ``runjobworker --reload --name reloader`` on the test database, in a
    session of its own; return it, its log file and its settings module's file."""
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"].startswith(
        ("file:memorydb", ":memory:")
    ):
        pytest.skip("a worker subprocess needs a file or server database")
    settings_file = tmp_path / "reload_settings.py"
    settings_file.write_text("from tests.worker_settings import *  # noqa: F403\n")
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "reload_settings",
        "DJQ_TEST_DB": connection.settings_dict["NAME"],
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)]),
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runjobworker", "--reload", "--name", "reloader"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the reloader's child too can be killed if all else fails
        )
    try:
        wait_until(lambda: "worker started name=reloader" in log_path.read_text(), timeout=60)
    except BaseException:
        _kill_if_alive(proc)
        raise
    return proc, log_path, settings_file


def _kill_if_alive(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_reload_restarts_the_worker_gracefully_when_a_file_changes(tmp_path):
    """A real ``runjobworker --reload``, on Django's own autoreloader: touch a module it
    imported, see the worker stop gracefully and start again; Ctrl-C (SIGINT to the
    terminal's process group) then stops it for good, gracefully, with exit code 0."""
    proc, log_path, settings_file = _start_reloader(tmp_path)
    try:
        # Django's StatReloader compares modification times about once a second, from its
        # first look onwards: move the file's time on until the reload shows in the log.
        stamp = time.time()

        def reloaded() -> bool:
            nonlocal stamp
            stamp += 2
            os.utime(settings_file, (stamp, stamp))
            return "reloading: finishing its running jobs first" in log_path.read_text()

        wait_until(reloaded, timeout=60, interval=0.5)
        wait_until(lambda: log_path.read_text().count("worker started name=reloader") == 2, 60)
        text = log_path.read_text()
        first_stop = text.index("worker stopped name=reloader")
        assert text.index("reloading: finishing") < first_stop < text.rindex("worker started")

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        text = log_path.read_text()
        assert "worker name=reloader stopping: finishing its running jobs first" in text
        assert text.count("worker stopped name=reloader") == 2
    finally:
        _kill_if_alive(proc)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_reload_passes_sigterm_on_to_the_worker_which_finishes_its_running_job(tmp_path):
    """SIGTERM to the first process of ``--reload`` (what a process manager sends): the
    worker process gets it, stops claiming and finishes the job it runs, then both exit 0."""
    proc, log_path, _ = _start_reloader(tmp_path)
    try:
        gate = tmp_path / "gate"
        handle = waits_for_file.enqueue(str(gate), "drained")
        wait_until(lambda: handle.refresh().status == "running", timeout=60)
        os.kill(proc.pid, signal.SIGTERM)  # the first process only
        stopping = "worker name=reloader stopping: finishing its running jobs first"
        wait_until(lambda: stopping in log_path.read_text(), timeout=30)
        gate.write_text("")
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        assert "worker stopped name=reloader" in log_path.read_text()
        assert handle.refresh().status == "completed"
        assert Execution.objects.filter(tag="drained").count() == 1
    finally:
        _kill_if_alive(proc)


@pytest.mark.parametrize("name", ["x" * 201, "", "tab\tname"])
def test_a_worker_name_that_cannot_be_stored_is_refused(name):
    with pytest.raises(CommandError, match="1 to 200 printable characters"):
        call_command("runjobworker", "--burst", "--name", name)


@pytest.mark.django_db
def test_concurrency_beyond_max_connections_is_warned_about(caplog):
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's max_connections")
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        allowed = int(cursor.fetchone()[0])
    call_command("runjobworker", "--burst", "--concurrency", str(min(512, allowed + 1)))
    if allowed + 1 > 512:
        pytest.skip("max_connections is above --concurrency's maximum")
    assert "too many clients" in caplog.text and f"allows {allowed}" in caplog.text


def test_the_default_concurrency_is_sized_to_the_cpus(monkeypatch):
    from django_jobqueue.worker import default_concurrency

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    assert default_concurrency() == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert default_concurrency() == 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert default_concurrency() == 32


def test_a_worker_started_before_migrate_says_to_run_migrate(tmp_path):
    """On a database without the queue's tables a worker used to retry "no such table"
    forever; it now exits at once, non-zero, saying to run ``migrate``, without a
    traceback."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "django", "runjobworker", "--burst"],
        cwd=ROOT,
        env={
            **env,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DJQ_SQLITE_DIR": str(tmp_path),  # a new, empty SQLite database
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Run 'python manage.py migrate' first" in proc.stderr
    assert "django_jobqueue.0001_initial" in proc.stderr
    assert "Traceback" not in proc.stderr
