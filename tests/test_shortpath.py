"""The short path (PostgreSQL): a batch of short jobs claimed, run and completed in one
transaction; a "short" job that runs long commits its claim at the window's bound and goes on
under its lease; SQLite and first runs keep the lease path."""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from django_jobqueue import signals
from django_jobqueue.base import ClaimedJob, Ending
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.querysets import JobQuerySet
from django_jobqueue.worker import Worker
from django_jobqueue.worker.outcomes import Outcome
from django_jobqueue.worker.runner import Runner
from django_jobqueue.worker.shortpath import MIN_RUNS, Durations
from django_jobqueue.worker.writer import Writer
from tests.conftest import requires_postgres, wait_until
from tests.testapp.jobs import cuts_the_window, noop, other_queue, waits_for_file
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


def _claim(count: int = 1) -> list[ClaimedJob]:
    now = timezone.now()
    return Job.objects.claim(queue=None, limit=count, worker="w", now=now, lease_until=now)


def test_in_transaction_rolled_back_drops_the_blocks_runs_written_or_late(caplog):
    """The runs of the block's claims: one whose outcome was written in the block, one that
    reports after the rollback; both outcomes are dropped (each ``finished`` once)."""
    writer, _, finished = _writer_and_claim()  # a run claimed before the block: not touched
    noop.enqueue()
    noop.enqueue()
    started: list[ClaimedJob] = []
    with pytest.raises(RuntimeError), writer.in_transaction(started):
        started += _claim(2)
        written, late = started
        writer.report(Outcome(written, True, 0.001))
        writer.flush()
        raise RuntimeError("the window failed")
    assert not finished  # nothing is done with before the commit
    rows = Job.objects.filter(pk__in=[job.id for job in started])
    assert {(row.status, row.attempts) for row in rows} == {("queued", 0)}  # rolled back
    writer.report(Outcome(late, True, 0.002))
    with caplog.at_level("INFO", logger="django_jobqueue.worker"):
        writer.flush()
    assert {(row.status, row.attempts) for row in rows} == {("queued", 0)}  # never written
    assert caplog.text.count("discarded (its claim was rolled back)") == 2
    assert sorted(finished) == sorted(job.job_id for job in started) and not writer.done


def test_a_later_claim_of_a_rolled_back_run_is_written_whoever_reports_first():
    """A rollback leaves the attempt unchanged: the next claim of the job has the same
    fence. Its outcome is written, even when it reports before the rolled-back run's."""
    writer, first, finished = _writer_and_claim()
    noop.enqueue()
    started: list[ClaimedJob] = []
    with pytest.raises(RuntimeError), writer.in_transaction(started):
        started += _claim()
        raise RuntimeError("the window failed")
    (again,) = _claim()
    assert again.fence == started[0].fence and again.job_id != first.job_id
    new, old = Outcome(again, True, 0.001), Outcome(started[0], True, 0.001)
    writer.report(new)
    writer.report(old)
    writer.flush()
    assert (new.ending, old.ending) == (Ending.COMPLETED, Ending.DISCARDED)
    assert Job.objects.get(pk=again.id).status == "completed"
    assert finished == [again.job_id, again.job_id]


def test_outcomes_of_earlier_claims_written_in_a_rolled_back_block_are_written_after():
    """A usual-path run (its claim committed before the block) whose outcome the block wrote:
    the rollback undid the write, so the outcome goes back to ``done``, and ``finished``
    waits until it is written for good."""
    writer, claimed, finished = _writer_and_claim()
    with pytest.raises(RuntimeError), writer.in_transaction([]):
        writer.report(Outcome(claimed, True, 0.001))
        writer.flush()
        raise RuntimeError("the window failed")
    assert Job.objects.get(pk=claimed.id).status == "running" and not finished
    assert [o.job for o in writer.done] == [claimed]
    writer.flush()
    assert Job.objects.get(pk=claimed.id).status == "completed"
    assert finished == [claimed.job_id]


def test_a_window_failing_between_two_claim_statements_leaves_nothing_buffered():
    """Each claim statement buffers its rows as it goes: a window that fails at its second
    one rolls back the first one's claims too, which must not stay buffered (to be run while
    another worker claims the same job with the same fence)."""
    noop.enqueue()  # queue "default"
    other_queue.enqueue(1)  # a queue of its own: a second claim statement
    queues = sorted(Job.objects.values_list("queue", flat=True))
    worker = Worker(queues, concurrency=2, schedule=False)
    real = JobQuerySet.claim
    calls: list[object] = []

    def claim(self: JobQuerySet, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
        calls.append(kwargs.get("queue"))
        if len(calls) == 2:
            raise OperationalError("server closed the connection unexpectedly")
        return real(self, *args, **kwargs)

    with mock.patch.object(JobQuerySet, "claim", claim), pytest.raises(OperationalError):
        worker._short.window(time.monotonic())
    assert len(calls) == 2
    assert not worker._claimer.buffer
    assert set(Job.objects.values_list("status", flat=True)) == {"queued"}


@requires_postgres
def test_a_claim_of_a_cut_window_that_never_started_is_written_when_claimed_again(
    settings, tmp_path
):
    """The window's connection is cut while one job runs and another, claimed with it but
    not short (no history), waits in the buffer: the unstarted one is claimed again (same
    fence) and its outcome is written, not discarded as the rolled-back claim's."""
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "PREFETCH": 0,
        "LEASE_SECONDS": 60,
        "SHORT_JOB_SECONDS": 0.05,
    }
    unarmed = str(tmp_path / "not-armed")
    for index in range(MIN_RUNS):
        cuts_the_window.enqueue(unarmed, f"train-{index}")
    trainer = Worker(burst=True, concurrency=1, schedule=False)
    trainer.run()
    armed = tmp_path / "armed"
    armed.write_text("")
    cut = cuts_the_window.enqueue(str(armed), "cut")
    other = noop.enqueue()
    worker = Worker(burst=True, concurrency=2, schedule=False)
    worker._short.durations = trainer._short.durations  # what this process learnt
    worker._claimer.avg_duration = trainer._claimer.avg_duration
    worker.run()
    assert not armed.exists()  # it fired, in a window
    rows = {row.job_id: (row.status, row.attempts) for row in Job.objects.all()}
    assert rows[other.id] == ("completed", 1)
    assert rows[cut.id] == ("completed", 1)


def test_in_transaction_sends_job_started_and_job_dead_lettered_after_the_commit():
    """A receiver never acts on a start or a dead letter its transaction may still roll
    back: both signals, and the worker forgetting the run, wait for the commit."""
    noop.enqueue()
    (claimed,) = _claim()
    forgotten: list[int] = []
    writer = Writer("default", "w", finished=lambda done: None, forget=forgotten.append)
    runner = Runner(1, lambda outcome: None, name="w")
    runner.after_commit = writer.after_commit  # as the worker sets it
    sent: list[str] = []

    def started(sender: object, job_id: str, **kwargs: object) -> None:
        sent.append(f"started {job_id}")

    def dead(sender: object, dead_letter: DeadLetter, **kwargs: object) -> None:
        sent.append(f"dead-lettered {dead_letter.job_id}")

    signals.job_started.connect(started)
    signals.job_dead_lettered.connect(dead)
    runner.open()
    try:
        with writer.in_transaction([claimed]):
            runner.start(claimed)
            writer.report(Outcome(claimed, False, 0.001, error="boom", retry=False))
            writer.flush()
            assert (sent, forgotten) == ([], [])  # not before the commit
    finally:
        runner.close()
        signals.job_started.disconnect(started)
        signals.job_dead_lettered.disconnect(dead)
    assert sent == [f"started {claimed.job_id}", f"dead-lettered {claimed.job_id}"]
    assert forgotten == [claimed.id]
