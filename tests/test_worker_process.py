"""Real ``runjobworker`` subprocesses: kill -9, SIGTERM, two workers, groups, retries."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest
from django.db import connection, transaction

from django_jobqueue.models import DeadLetter, Job
from tests.conftest import PGBOUNCER, POSTGRES, wait_until
from tests.testapp.jobs import add, always_fails, record, sleep_then_record
from tests.testapp.models import Execution

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def _status(job_id: str) -> str:
    return Job.objects.get(job_id=job_id).status


def test_kill_9_mid_job_the_job_runs_again_on_another_worker(worker_processes, tmp_path):
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("killed", 30, str(marker))
    victim = worker_processes.start()
    wait_until(marker.exists, timeout=20)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert _status(handle.id) == "running"
    # Let the job be quick on its second run: same row, so rewrite its arguments.
    Job.objects.filter(job_id=handle.id).update(args=["killed", 0, ""])
    worker_processes.start()
    wait_until(lambda: _status(handle.id) == "completed", timeout=30)
    row = Job.objects.get(job_id=handle.id)
    assert row.attempts == 2
    assert "Lease expired" in row.last_error
    assert Execution.objects.filter(tag="killed").count() == 1


def test_sigterm_finishes_the_running_job_and_exits_0(worker_processes, tmp_path):
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("graceful", 1.5, str(marker))
    waiting = add.using(run_after=None).enqueue(1, 1)
    proc = worker_processes.start("--concurrency", "1")
    wait_until(marker.exists, timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, worker_processes.log(proc)
    assert _status(handle.id) == "completed"
    assert Execution.objects.filter(tag="graceful").count() == 1
    # The job behind it was not started after the signal, nor left claimed.
    row = Job.objects.get(job_id=waiting.id)
    assert row.status in ("queued", "completed")
    assert row.status == "completed" or row.attempts == 0
    assert "got SIGTERM" in worker_processes.log(proc)


def test_two_workers_drain_500_jobs_each_exactly_once(worker_processes):
    record.enqueue_many([(f"job-{i}",) for i in range(500)])
    first = worker_processes.start("--concurrency", "2")
    second = worker_processes.start("--concurrency", "2")
    wait_until(lambda: Execution.objects.count() >= 500, timeout=120, interval=0.2)
    wait_until(lambda: not Job.objects.exclude(status="completed").exists(), timeout=30)
    tags = list(Execution.objects.values_list("tag", flat=True))
    assert len(tags) == 500 and len(set(tags)) == 500
    pids = set(Execution.objects.values_list("pid", flat=True))
    assert pids == {first.pid, second.pid}, "both workers should have taken a share"


def test_group_order_holds_under_two_workers(worker_processes):
    for index in range(8):
        record.using(group="account:1").enqueue(f"a-{index}", sleep=0.05)
        record.using(group="account:2").enqueue(f"b-{index}", sleep=0.05)
    worker_processes.start("--concurrency", "2")
    worker_processes.start("--concurrency", "2")
    wait_until(lambda: Execution.objects.count() >= 16, timeout=60, interval=0.1)
    # A job writes its Execution row before its worker records it completed.
    wait_until(lambda: not Job.objects.exclude(status="completed").exists(), timeout=30)
    for group, prefix in (("account:1", "a"), ("account:2", "b")):
        rows = list(Job.objects.filter(group=group).order_by("id"))
        assert [r.args[0] for r in rows] == [f"{prefix}-{i}" for i in range(8)]
        assert all(r.status == "completed" for r in rows)
    for prefix in ("a-", "b-"):
        runs = list(Execution.objects.filter(tag__startswith=prefix).order_by("started"))
        for earlier, later in itertools.pairwise(runs):
            assert earlier.at <= later.started, f"{earlier.tag} overlapped {later.tag}"
    tags = list(Execution.objects.order_by("id").values_list("tag", flat=True))
    assert [t for t in tags if t.startswith("a-")] == [f"a-{i}" for i in range(8)]
    assert [t for t in tags if t.startswith("b-")] == [f"b-{i}" for i in range(8)]


def test_retries_end_in_a_dead_letter(worker_processes):
    handle = always_fails.enqueue("poison")
    proc = worker_processes.start()
    wait_until(lambda: _status(handle.id) == "failed", timeout=30)
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert letter.attempts == 3 and letter.error == "RuntimeError: poison"
    log = worker_processes.log(proc)
    assert log.count("outcome=failed, retry in") == 2
    assert "outcome=dead-lettered" in log


def test_rolled_back_enqueue_never_runs(worker_processes):
    proc = worker_processes.start()
    with pytest.raises(RuntimeError), transaction.atomic():
        record.enqueue("rolled-back")
        raise RuntimeError
    committed = record.enqueue("committed")
    wait_until(lambda: _status(committed.id) == "completed", timeout=30)
    assert list(Execution.objects.values_list("tag", flat=True)) == ["committed"]
    assert Job.objects.count() == 1
    assert proc.poll() is None


def test_a_long_healthy_job_is_never_started_twice(worker_processes, tmp_path):
    """The lease (2 s in the tests) is renewed while a 5 s job runs; the other worker,
    which reaps expired leases, never takes it over."""
    handle = sleep_then_record.enqueue("long", 5, str(tmp_path / "m"))
    worker_processes.start()
    worker_processes.start()
    wait_until(lambda: _status(handle.id) == "completed", timeout=40)
    assert Job.objects.get(job_id=handle.id).attempts == 1
    assert Execution.objects.filter(tag="long").count() == 1


@pytest.mark.skipif(not POSTGRES, reason="kills server-side connections: PostgreSQL only")
@pytest.mark.skipif(
    PGBOUNCER,
    reason="through PgBouncer the pooler replaces a killed server connection: the worker's own "
    "connection never breaks, so there is no database error to survive",
)
def test_worker_survives_its_database_connections_being_killed(worker_processes):
    proc = worker_processes.start()
    first = add.enqueue(1, 1)
    wait_until(lambda: _status(first.id) == "completed", timeout=30)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        killed = sum(1 for (ok,) in cursor.fetchall() if ok)
    assert killed >= 1
    second = add.enqueue(2, 2)
    wait_until(lambda: _status(second.id) == "completed", timeout=30)
    assert proc.poll() is None
    assert "database error in worker" in worker_processes.log(proc)


def test_a_draining_worker_keeps_renewing_its_lease(worker_processes, tmp_path):
    """SIGTERM, then a job three times longer than the lease (2 s): it is still one run, and
    the draining worker sleeps instead of spinning."""
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("drain", 6, str(marker))
    draining = worker_processes.start()
    wait_until(marker.exists, timeout=20)
    draining.send_signal(signal.SIGTERM)
    other = worker_processes.start()
    cpu_before = _cpu_seconds(draining.pid)
    time.sleep(2)  # a measuring window, not a synchronisation: the job runs 4 s more
    cpu_used = _cpu_seconds(draining.pid) - cpu_before
    assert draining.wait(30) == 0, worker_processes.log(draining)
    row = Job.objects.get(job_id=handle.id)
    assert (row.status, row.attempts) == ("completed", 1)
    assert Execution.objects.filter(tag="drain").count() == 1
    assert "lease expired" not in worker_processes.log(other)
    assert cpu_used < 0.5, f"the draining worker spun: {cpu_used:.2f}s of CPU in 2s"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
