"""``manage.py runjobworker``: arguments, help, errors, and the settings module."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from django_jobqueue.models import Job
from tests.conftest import ROOT
from tests.testapp.jobs import add, fails_then_succeeds, other_queue


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
    assert "(default: 1)" in text
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
    retry_elsewhere = Job.objects.create(
        job_id="elsewhere",
        name=other_queue.name,
        queue="other",
        attempts=1,
        max_attempts=3,
        result_ttl=60,
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
