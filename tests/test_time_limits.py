"""Time limits: an attempt past its ``time_limit`` fails with an error naming the limit, its
slot is freed at once, async jobs are cancelled, sync ones interrupted where Python can, a
late thread's outcome is discarded, and a worker whose abandoned threads pile up exits 75."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from django_jobqueue import Retry, TimeLimitExceeded, job
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.testing import run_jobs
from django_jobqueue.worker import Worker
from django_jobqueue.worker.timelimits import EXIT_ABANDONED_THREADS, interrupts_stall_tracers
from tests.conftest import wait_until
from tests.test_commands import _help
from tests.testapp.jobs import (
    ASYNC_EVENTS,
    GATES,
    INTERRUPTED,
    Gate,
    add,
    async_naps,
    blocks_on_gate,
    naps,
    naps_limited,
    noop,
    sleep_then_record,
    slow_first_attempt,
    waits_for_file,
)
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

#: CPython 3.11 under a tracer (coverage's, in scripts/test): sync jobs past their limit are
#: not interrupted there (see interrupts_stall_tracers and docs/guide/time-limits.md).
NO_INTERRUPTS = interrupts_stall_tracers()
needs_interrupts = pytest.mark.skipif(
    NO_INTERRUPTS, reason="CPython 3.11 under a tracer: threads are not interrupted"
)


def _error(limit: str) -> str:
    return f"TimeLimitExceeded: the attempt ran longer than its time_limit of {limit}s"


@pytest.fixture
def gate() -> Iterator[str]:
    """The name of a fresh closed :class:`Gate`; opened at the end so no thread stays."""
    name = f"gate-{uuid.uuid4().hex}"
    GATES[name] = Gate()
    yield name
    door = GATES.pop(name)
    if door._lock.locked() and door.thread is not None:
        door.open()


@pytest.fixture
def background_worker() -> Iterator[Callable[..., Worker]]:
    """Start a worker on a thread (it runs until stopped); stop and join it at the end."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(**options: Any) -> Worker:
        worker = Worker(**options)
        thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(20)
        assert not thread.is_alive(), "the worker did not stop"


def test_the_exception_names_the_limit_and_is_not_an_exception():
    assert str(TimeLimitExceeded(2.0)) == "the attempt ran longer than its time_limit of 2s"
    assert str(TimeLimitExceeded(0.25)).endswith("of 0.25s")
    # A job's `except Exception:` must not swallow the interrupt.
    assert not issubclass(TimeLimitExceeded, Exception)


def test_a_sync_job_past_its_limit_frees_its_slot_while_its_thread_lives_on(
    settings, gate, background_worker
):
    # Neither the poll nor upkeep timers wake the loop before 5s: only the deadline can.
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "POLL_INTERVAL": 30,
        "LEASE_SECONDS": 60,
        "RETRY_BACKOFF": 60,
        "RETRY_BACKOFF_MAX": 60,
    }
    stuck = blocks_on_gate.using(time_limit=0.3, priority=1).enqueue(gate)
    other = add.enqueue(1, 2)
    timed = add.using(time_limit=5, priority=-1).enqueue(2, 3)  # on a timed thread too
    started = time.monotonic()
    worker = background_worker(concurrency=1)
    wait_until(lambda: other.refresh().status == "completed", timeout=3)
    elapsed = time.monotonic() - started
    wait_until(lambda: timed.refresh().status == "completed", timeout=3)
    assert (other.result, timed.result) == (3, 5)
    row = Job.objects.get(job_id=stuck.id)
    assert (row.status, row.attempts, row.last_error) == ("queued", 1, _error("0.3"))
    # The only slot ran the other job while the stuck one's thread was still blocked.
    door = GATES[gate]
    assert door.thread is not None and door.thread.is_alive() and door.events == []
    assert door.thread.name.startswith("django-jobqueue-timed-job-")
    # It woke for the deadline, without spinning until then.
    assert 0.3 <= elapsed < 3 and worker.passes < 30, (elapsed, worker.passes)
    door.open()
    wait_until(lambda: not door.thread.is_alive())
    # The interrupt landed as soon as the blocking call returned: no code ran after it (under
    # a tracer on CPython 3.11 no interrupt is sent, and the job ran to its end).
    assert door.events == (["returned"] if NO_INTERRUPTS else ["interrupted"])
    assert Job.objects.get(job_id=stuck.id).status == "queued"


def test_the_late_outcome_of_an_interrupted_thread_does_not_overwrite_the_retry(
    tmp_path, gate, background_worker, caplog
):
    handle = slow_first_attempt.using(time_limit=0.3).enqueue(str(tmp_path / "count"), gate)
    worker = background_worker(concurrency=1)
    wait_until(lambda: handle.refresh().status == "completed", timeout=10)
    assert (handle.result, handle.attempts) == ("attempt 2", 2)
    door = GATES[gate]
    assert door.thread is not None and door.thread.is_alive()
    door.open()  # attempt 1 swallows the interrupt (if one was sent) and returns "late"
    wait_until(lambda: not door.thread.is_alive())
    swallowed = [] if NO_INTERRUPTS else ["swallowed the interrupt"]
    assert door.events == [*swallowed, "returned late"]
    worker.stop()  # drains: an outcome reported late would be written now
    wait_until(lambda: "worker stopped" in caplog.text)
    handle.refresh()
    assert (handle.status, handle.result, handle.attempts) == ("completed", "attempt 2", 2)
    assert worker.processed == 2
    assert "outcome=discarded" not in caplog.text
    assert caplog.text.count(f"job id={handle.id} ") == 2, caplog.text


@needs_interrupts
def test_an_interruptible_sync_job_is_interrupted_then_retried_then_dead_lettered(run_worker):
    tag = uuid.uuid4().hex
    handle = naps.using(time_limit=0.2, max_attempts=2).enqueue(tag)
    started = time.monotonic()
    worker = run_worker(wait_for_retries=True)
    assert time.monotonic() - started < 5
    assert worker.processed == 2
    assert (handle.refresh().status, handle.attempts) == ("failed", 2)
    assert handle.error == _error("0.2")
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert (letter.attempts, letter.error) == (2, _error("0.2"))
    # The traceback shows where the job was when the limit passed.
    assert "Where the attempt's thread was when its time limit passed" in letter.traceback
    assert "in naps" in letter.traceback and "time.sleep(0.01)" in letter.traceback
    # The interrupt reached the job's code, on both attempts.
    wait_until(lambda: INTERRUPTED.count(tag) == 2)


@pytest.mark.parametrize(
    ("source", "limit"),
    [("setting", "0.2"), ("decorator", "0.3"), ("using", "0.25")],
)
def test_the_limit_comes_from_the_setting_the_decorator_or_using(
    settings, run_worker, source, limit
):
    tag = uuid.uuid4().hex
    if source == "setting":
        settings.JOBQUEUE = {**settings.JOBQUEUE, "TIME_LIMIT": 0.2}
        handle = naps.using(max_attempts=1).enqueue(tag, 5)
    elif source == "decorator":
        settings.JOBQUEUE = {**settings.JOBQUEUE, "TIME_LIMIT": 10}
        handle = naps_limited.enqueue(tag, 5)
    else:
        settings.JOBQUEUE = {**settings.JOBQUEUE, "TIME_LIMIT": 10}
        handle = naps_limited.using(time_limit=0.25).enqueue(tag, 5)
    run_worker()
    assert (handle.refresh().status, handle.error) == ("failed", _error(limit))
    assert DeadLetter.objects.get(job_id=handle.id).error == _error(limit)
    if not NO_INTERRUPTS:
        wait_until(lambda: tag in INTERRUPTED)


def test_a_job_without_a_limit_runs_past_the_others_limits(settings, run_worker):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "TIME_LIMIT": 0.2}
    limited = naps.using(max_attempts=1).enqueue("limited", 5)
    free = naps.using(time_limit=None).enqueue("free", 0.5)
    run_worker(concurrency=2)
    assert (limited.refresh().status, free.refresh().status) == ("failed", "completed")
    assert free.result == "free"


def test_an_async_job_past_its_limit_is_cancelled(run_worker):
    tag = uuid.uuid4().hex
    handle = async_naps.using(time_limit=0.3, max_attempts=1).enqueue(tag, 5)
    other = async_naps.using(time_limit=5).enqueue("quick", 0)
    started = time.monotonic()
    run_worker(concurrency=2)
    assert time.monotonic() - started < 3
    assert (handle.refresh().status, handle.error) == ("failed", _error("0.3"))
    assert (other.refresh().status, other.result) == ("completed", "quick")
    # The task got CancelledError (and ran its finally block).
    wait_until(lambda: f"{tag}:finally" in ASYNC_EVENTS)
    assert ASYNC_EVENTS.count(f"{tag}:cancelled") == 1
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert "Where the attempt's task was" in letter.traceback and "async_naps" in letter.traceback


@pytest.mark.subprocess
def test_a_worker_whose_abandoned_threads_pile_up_drains_and_exits_75(worker_processes, tmp_path):
    """Three threads stuck in C past their limit (more than --concurrency 2): the worker stops
    claiming, finishes the job it runs, and exits with its own code. (Under a tracer on
    CPython 3.11 the threads are not interrupted, so each counts as abandoned at once.)"""
    assert EXIT_ABANDONED_THREADS == 75
    release = tmp_path / "release"
    draining = waits_for_file.using(priority=10).enqueue(str(release), "drained")
    stuck = [
        sleep_then_record.using(time_limit=0.3, max_attempts=1, priority=3 - i).enqueue(
            f"stuck-{i}", 60
        )
        for i in range(3)
    ]
    proc = worker_processes.start("--concurrency", "2")
    wait_until(lambda: "claiming no more jobs" in worker_processes.log(proc), timeout=20)
    assert proc.poll() is None, "it exited without finishing its running job"
    assert draining.refresh().status == "running"
    # A slot is free now: a worker still claiming would take this one.
    left = add.enqueue(1, 1)
    release.touch()
    assert proc.wait(20) == EXIT_ABANDONED_THREADS, worker_processes.log(proc)
    log = worker_processes.log(proc)
    assert "3 threads of jobs past their time limit are still running" in log
    assert "worker exited with code 75" in log
    for handle in stuck:
        assert (handle.refresh().status, handle.error) == ("failed", _error("0.3"))
    assert not Execution.objects.filter(tag__startswith="stuck").exists()
    assert draining.refresh().status == "completed"
    row = Job.objects.get(job_id=left.id)
    assert (row.status, row.attempts) == ("queued", 0)


def test_a_traced_worker_runs_on_while_a_job_past_its_limit_is_blocked_in_c(settings, gate, caplog):
    """Under a trace function (coverage, a debugger, a profiler) the worker keeps running
    other jobs while a job past its limit is blocked in C. On CPython 3.11 an interrupt left
    pending in that thread made every traced thread spin at its next call until the C call
    returned, so there it is not sent (and the worker says why, once); elsewhere it is."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05, "LEASE_SECONDS": 60}
    stuck = blocks_on_gate.using(time_limit=0.3, max_attempts=1, priority=1).enqueue(gate)
    worker = Worker(concurrency=2)
    traced: list[bool] = []

    def run_traced() -> None:
        sys.settrace(lambda frame, event, arg: None)
        try:
            traced.append(interrupts_stall_tracers())
            worker.run()
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run_traced, name="traced-worker", daemon=True)
    thread.start()
    try:
        wait_until(lambda: stuck.refresh().status == "failed", timeout=5)
        # The limit passed while the job's thread is blocked: later jobs still run.
        later = add.enqueue(2, 2)
        wait_until(lambda: later.refresh().status == "completed", timeout=5)
        assert later.result == 4
    finally:
        GATES[gate].open()
        worker.stop()
        thread.join(20)
    assert not thread.is_alive(), "the worker did not stop"
    door = GATES[gate]
    wait_until(lambda: door.thread is not None and not door.thread.is_alive())
    on_311 = sys.version_info[:2] == (3, 11)
    assert traced == [on_311]
    assert door.events == (["returned"] if on_311 else ["interrupted"])
    told = "are not interrupted in this worker: it runs on CPython 3.11 with a trace"
    assert (told in caplog.text) == on_311
    assert stuck.refresh().error == _error("0.3")


def test_help_names_the_abandoned_threads_exit_code():
    text = " ".join(_help().split())
    assert "exits with code 75" in text


def test_a_time_limit_adds_no_statement_per_job(settings):
    """Timed jobs cost what untimed ones do: the pinned claim and completion, nothing more."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.test_hot_path import STATEMENTS, TRANSACTION_CONTROL

    if connection.vendor not in STATEMENTS:
        pytest.skip(f"no statement counts for {connection.vendor}")
    settings.JOBQUEUE = {**settings.JOBQUEUE, "PREFETCH": 0, "LEASE_SECONDS": 60}
    count = 10
    noop.using(time_limit=30).enqueue_many([()] * count)
    add.using(time_limit=30).enqueue_many([(1, 2)] * count)
    worker = Worker(burst=True, concurrency=1)
    with CaptureQueriesContext(connection) as queries:
        worker.run()
    assert worker.processed == 2 * count
    setup = ("SET synchronous_commit", "SELECT reltuples", "ANALYZE")
    table = connection.ops.quote_name(Job._meta.db_table)
    reap = f"ORDER BY {table}.{connection.ops.quote_name('lease_expires_at')}"
    rerun = f"{table}.{connection.ops.quote_name('rerun')} IS NOT NULL"  # with the reap
    # The worker's heartbeat row is upkeep on its timer, not per job (test_worker pins it).
    from django_jobqueue.models import WorkerHeartbeat

    heartbeats = connection.ops.quote_name(WorkerHeartbeat._meta.db_table)
    hot = [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].startswith(setup)
        and reap not in q["sql"]
        and rerun not in q["sql"]
        and heartbeats not in q["sql"]
        and not q["sql"].startswith(f"UPDATE {table} SET lease_expires_at")
        and not q["sql"].startswith(TRANSACTION_CONTROL)  # commits: pinned in test_worker
    ]
    expected = STATEMENTS[connection.vendor]
    assert len(hot) == count * (expected["no result"] + expected["result"]) + expected["per run"]


@pytest.mark.django_db
def test_a_failure_raised_after_the_limit_keeps_its_retry_rules():
    """A run that raised after its limit (inline: nothing interrupted it) fails with its own
    error and retry rules: an error outside ``retry_on`` is not retried, ``Retry(after=)``
    keeps its time (EAGER's ``run_now`` does not run it again at once)."""

    @job(name="tests.late_refusal", time_limit=0.05, retry_on=(ConnectionError,))
    def late_refusal() -> None:
        time.sleep(0.1)  # the run's own duration, past its limit
        raise ValueError("bad order")

    @job(name="tests.late_retry", time_limit=0.05, max_attempts=3)
    def late_retry() -> None:
        time.sleep(0.1)
        raise Retry(after=3600, reason="partner busy")

    refused = late_refusal.enqueue()
    deferred = late_retry.enqueue()
    assert run_jobs() == 2
    row = Job.objects.get(job_id=refused.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "not retried: ValueError is not in retry_on" in row.last_error
    row = Job.objects.get(job_id=deferred.id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert row.run_after is not None and row.run_after > timezone.now() + timedelta(minutes=59)
