"""``@job(atomic=True)``: the job's writes commit with its completion, fenced by the attempt,
or not at all: in process, and with real worker subprocesses killed or stopped mid-job."""

from __future__ import annotations

import signal

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_jobqueue import job
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import DeadLetter, Job, JobResult
from django_jobqueue.testing import run_jobs
from django_jobqueue.worker import Worker
from django_jobqueue.worker.atomic import LeaseLost, run_atomic
from tests.conftest import POSTGRES, wait_until
from tests.testapp.jobs import atomic_record
from tests.testapp.models import Execution


def _row(job_id: str) -> Job:
    return Job.objects.get(job_id=job_id)


# -- bad use -----------------------------------------------------------------------------------


def test_atomic_refuses_an_async_job():
    async def fetch() -> None: ...

    fetch.__qualname__ = "fetch"
    with pytest.raises(InvalidJobError, match="async def job cannot run inside"):
        job(name="tests.atomic_async", atomic=True)(fetch)


def test_atomic_takes_a_bool():
    def charge() -> None: ...

    with pytest.raises(InvalidJobError, match="takes True or False"):
        job(name="tests.atomic_bad", atomic="yes")(charge)  # type: ignore[call-overload]


# -- in process ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_atomic_job_commits_its_writes_with_its_completion():
    handle = atomic_record.enqueue("atomic-ok")
    worker = Worker(burst=True, concurrency=1)
    assert worker.run() == 0
    row = _row(handle.id)
    assert (row.status, row.attempts) == ("completed", 1)
    assert JobResult.objects.get(job=row).result == "atomic-ok"
    assert Execution.objects.filter(tag="atomic-ok").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_failed_atomic_attempt_rolls_its_writes_back_then_records_the_failure(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0.0, "RETRY_BACKOFF_MAX": 0.0}
    handle = atomic_record.using(max_attempts=2).enqueue("atomic-fails", fail=True)
    Worker(burst=True, concurrency=1).run()
    row = _row(handle.id)
    assert (row.status, row.attempts) == ("failed", 2)
    assert "failed after its write" in row.last_error
    assert DeadLetter.objects.filter(job_id=handle.id).exists()
    assert not Execution.objects.filter(tag="atomic-fails").exists()


@pytest.mark.django_db(transaction=True)
def test_an_atomic_run_that_lost_its_attempt_rolls_its_writes_back():
    """The fence is checked in the job's transaction, on the locked row: here the attempt
    moves on while the job runs (as when another worker takes it over)."""
    handle = atomic_record.enqueue("atomic-stale")
    now = timezone.now()
    (claimed,) = Job.objects.claim(queue=None, limit=1, worker="w", now=now, lease_until=now)

    def taken_over() -> str:
        Execution.objects.create(tag="atomic-stale", pid=0)
        with connection.cursor() as cursor:  # another attempt took the row (same database)
            cursor.execute(
                f"UPDATE {Job._meta.db_table} SET attempts = attempts + 1 WHERE id = %s",
                [claimed.id],
            )
        return "late"

    with pytest.raises(LeaseLost, match="rolled back"):
        run_atomic("default", claimed, taken_over)
    assert not Execution.objects.filter(tag="atomic-stale").exists()
    row = _row(handle.id)
    assert (row.status, row.attempts) == ("running", 1)  # the takeover was rolled back too


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_atomic_run_rolls_back_and_ends_cancelled():
    handle = atomic_record.enqueue("atomic-cancel")
    now = timezone.now()
    (claimed,) = Job.objects.claim(queue=None, limit=1, worker="w", now=now, lease_until=now)
    Job.objects.filter(pk=claimed.id).update(cancel_requested=True)
    outcome = run_atomic("default", claimed, lambda: Execution.objects.create(tag="c", pid=0).pk)
    assert outcome.cancelled and not outcome.committed
    assert not Execution.objects.filter(tag="c").exists()
    assert _row(handle.id).status == "running"  # the writer records the cancel


@pytest.mark.django_db
def test_run_jobs_runs_an_atomic_job_in_its_transaction():
    ok = atomic_record.enqueue("inline-ok")
    bad = atomic_record.using(max_attempts=1).enqueue("inline-bad", fail=True)
    run_jobs()
    assert _row(ok.id).status == "completed"
    assert _row(bad.id).status == "failed"
    assert list(Execution.objects.values_list("tag", flat=True)) == ["inline-ok"]
    assert transaction.get_autocommit() is False  # still inside the test's transaction


# -- real worker processes -----------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_kill_9_mid_atomic_job_leaves_no_writes_and_it_runs_once_more(worker_processes, tmp_path):
    marker, release = tmp_path / "written", tmp_path / "release"
    handle = atomic_record.enqueue("atomic-killed", str(marker), str(release))
    victim = worker_processes.start()
    wait_until(marker.exists, timeout=20)  # its row is written, not committed
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert not Execution.objects.filter(tag="atomic-killed").exists()
    assert _row(handle.id).status == "running"
    release.write_text("go")
    worker_processes.start()
    wait_until(lambda: _row(handle.id).status == "completed", timeout=30)
    row = _row(handle.id)
    assert row.attempts == 2
    assert "Lease expired" in row.last_error
    assert Execution.objects.filter(tag="atomic-killed").count() == 1


@pytest.mark.subprocess
@pytest.mark.skipif(
    not POSTGRES, reason="SQLite: the stopped run holds the write lock, nobody can take over"
)
@pytest.mark.django_db(transaction=True)
def test_a_stopped_worker_past_its_lease_rolls_its_writes_back(worker_processes, tmp_path):
    """SIGSTOP past the lease, another worker takes the job over and completes it, SIGCONT:
    the stale run's writes roll back; exactly one effect."""
    marker, release = tmp_path / "written", tmp_path / "release"
    handle = atomic_record.enqueue("atomic-stopped", str(marker), str(release))
    stale = worker_processes.start()
    wait_until(marker.exists, timeout=20)
    stale.send_signal(signal.SIGSTOP)
    try:
        marker.unlink()
        taker = worker_processes.start()
        # The lease (2 s) runs out; the other worker reaps the job and runs attempt 2.
        wait_until(lambda: marker.exists() and _row(handle.id).attempts == 2, timeout=30)
        release.write_text("go")
        wait_until(lambda: _row(handle.id).status == "completed", timeout=30)
    finally:
        stale.send_signal(signal.SIGCONT)
    wait_until(lambda: "lost its lease" in worker_processes.log(stale), timeout=30)
    assert "outcome=discarded (lease lost)" in worker_processes.log(stale)
    assert Execution.objects.filter(tag="atomic-stopped").count() == 1
    row = _row(handle.id)
    assert (row.status, row.attempts) == ("completed", 2)
    assert JobResult.objects.get(job=row).result == "atomic-stopped"
    assert "outcome=completed" in worker_processes.log(taker)
