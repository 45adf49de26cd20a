"""The short path (PostgreSQL): a batch of short jobs claimed, run and completed in one
transaction; a "short" job that runs long commits its claim at the window's bound and goes on
under its lease; SQLite and first runs keep the lease path."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.utils import timezone

from django_jobqueue import signals
from django_jobqueue.base import ClaimedJob
from django_jobqueue.models import Job
from django_jobqueue.worker import Worker
from django_jobqueue.worker.outcomes import Outcome
from django_jobqueue.worker.shortpath import MIN_RUNS, Durations
from django_jobqueue.worker.writer import Writer
from tests.conftest import requires_postgres, wait_until
from tests.testapp.jobs import cuts_the_window, noop, waits_for_file
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_name_is_short_after_min_runs_under_the_bound():
    durations = Durations()
    for _ in range(MIN_RUNS - 1):
        durations.record("a", 0.0001)
    assert not durations.short("a", 0.002)  # too few runs: its length is not known yet
    durations.record("a", 0.0001)
    assert durations.short("a", 0.002)
    for _ in range(10):
        durations.record("a", 0.5)  # it became long: back to the lease path
    assert not durations.short("a", 0.002)
    assert not durations.short("never-seen", 0.002)


@pytest.mark.parametrize("bound", [0.05, 0])
def test_no_window_on_sqlite_nor_with_a_zero_bound(settings, bound):
    """SQLite keeps the lease path whatever the bound; ``SHORT_JOB_SECONDS`` 0 turns the
    short path off on PostgreSQL too."""
    if bound and connection.vendor != "sqlite":
        pytest.skip("on PostgreSQL this bound opens windows")
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SHORT_JOB_SECONDS": bound}
    noop.enqueue_many([()] * 20)
    worker = Worker(burst=True, concurrency=2)
    worker.run()
    assert worker.processed == 20
    assert worker._short.windows == 0


@requires_postgres
def test_a_short_name_that_runs_long_commits_its_claim_at_the_bound(settings, tmp_path):
    """Inside the window the claim is not committed (the row reads ``queued`` from another
    connection); at the bound the transaction commits whatever still runs: the row reads
    ``running`` while the job waits, and it completes later under its lease, once."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SHORT_JOB_SECONDS": 0.05, "LEASE_SECONDS": 60}
    there = tmp_path / "there"
    there.write_text("")
    worker = Worker(concurrency=2, schedule=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        for index in range(MIN_RUNS + 1):  # one at a time: each run teaches the worker
            handle = waits_for_file.enqueue(str(there), f"t-{index}")
            wait_until(lambda h=handle: h.refresh().status == "completed", timeout=20)
        assert worker._short.jobs >= 1  # the name is short now: its last run had a window
        before = worker._short.jobs
        gate = tmp_path / "gate"
        long = waits_for_file.enqueue(str(gate), "long")
        wait_until(lambda: Job.objects.get(job_id=long.id).status == "running", timeout=20)
        wait_until(lambda: worker._short.jobs == before + 1, timeout=5)  # started in a window
        assert not Execution.objects.filter(tag="long").exists()  # and still runs
        gate.write_text("")
        wait_until(lambda: Job.objects.get(job_id=long.id).status == "completed", timeout=20)
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()
    row = Job.objects.get(job_id=long.id)
    assert row.attempts == 1
    assert Execution.objects.filter(tag="long").count() == 1


@requires_postgres
def test_a_window_that_loses_its_connection_rolls_back_and_drops_its_outcomes(
    settings, tmp_path, caplog
):
    """The armed job cuts the window's connection (idle in its transaction while the job
    runs): the claim rolls back with it, the job is queued again with its attempt unused and
    runs again; the outcome of the rolled-back run is dropped, never written on top of the
    next run's attempt."""
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "PREFETCH": 0,
        "LEASE_SECONDS": 60,
        "SHORT_JOB_SECONDS": 0.05,
    }
    unarmed = str(tmp_path / "not-armed")
    for index in range(MIN_RUNS):
        cuts_the_window.enqueue(unarmed, f"train-{index}")
    armed = tmp_path / "armed"
    armed.write_text("")
    handle = cuts_the_window.enqueue(str(armed), "cut")
    worker = Worker(burst=True, concurrency=1, schedule=False)
    with caplog.at_level("INFO", logger="django_jobqueue.worker"):
        worker.run()
    assert not armed.exists()  # it fired, in a window
    row = Job.objects.get(job_id=handle.id)
    assert (row.status, row.attempts) == ("completed", 1)  # the cut run's claim was undone
    assert Execution.objects.filter(tag="cut").count() == 2  # run twice: at least once
    assert "discarded (its claim was rolled back)" in caplog.text


# -- the writer's transaction, as the short path chooses it (any database) --------------------


def _writer_and_claim() -> tuple[Writer, ClaimedJob, list[str]]:
    noop.enqueue()
    now = timezone.now()
    (claimed,) = Job.objects.claim(queue=None, limit=1, worker="w", now=now, lease_until=now)
    finished: list[str] = []
    writer = Writer(
        "default",
        "w",
        finished=lambda done: finished.extend(o.job.job_id for o in done),
        forget=lambda pk: None,
    )
    return writer, claimed, finished


def test_in_transaction_records_with_the_block_and_announces_after_the_commit():
    writer, claimed, _ = _writer_and_claim()
    sent: list[str] = []

    def receiver(sender: object, job_id: str, **kwargs: object) -> None:
        sent.append(job_id)

    signals.job_finished.connect(receiver)
    try:
        with writer.in_transaction([claimed]):
            writer.report(Outcome(claimed, True, 0.001))
            writer.flush()
            assert sent == []  # not before the commit
        assert sent == [claimed.job_id]
    finally:
        signals.job_finished.disconnect(receiver)
    assert Job.objects.get(pk=claimed.id).status == "completed"


def test_in_transaction_rolled_back_drops_the_blocks_runs_written_or_late(caplog):
    writer, claimed, finished = _writer_and_claim()
    with pytest.raises(RuntimeError), writer.in_transaction([claimed]):
        writer.report(Outcome(claimed, True, 0.001))
        writer.flush()
        raise RuntimeError("the window failed")
    assert Job.objects.get(pk=claimed.id).status == "running"  # the completion rolled back
    late = Outcome(claimed, True, 0.002)  # the same run reports again: never written
    writer.report(late)
    with caplog.at_level("INFO", logger="django_jobqueue.worker"):
        writer.flush()
    assert Job.objects.get(pk=claimed.id).status == "running"
    assert "discarded (its claim was rolled back)" in caplog.text
    assert finished.count(claimed.job_id) == 2 and not writer.done
