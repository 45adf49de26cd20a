"""The worker, in process: running, ordering, retries, dead letters, leases, fencing, pruning."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import channel_layers
from django.db import connection
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import get_job
from django_jobqueue.models import DeadLetter, Job, JobResult
from django_jobqueue.worker import Outcome, Worker, backoff
from tests.conftest import PGBOUNCER, requires_postgres, wait_until
from tests.testapp.jobs import (
    add,
    always_fails,
    async_add,
    async_count,
    echo,
    huge_int,
    noop,
    other_queue,
    record,
    returns_unserializable,
    sleeper,
    surrogate,
)
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db


def test_runs_sync_and_async_jobs_and_keeps_results(run_worker):
    sync = add.enqueue(1, 2)
    coro = async_add.enqueue(3, 4)
    none = noop.enqueue()
    worker = run_worker()
    assert worker.processed == 3
    assert (sync.refresh().status, sync.result, sync.attempts) == ("completed", 3, 1)
    assert (coro.refresh().status, coro.result) == ("completed", 7)
    assert none.refresh().status == "completed" and none.result is None
    # A None result needs no result row.
    assert not JobResult.objects.filter(job__job_id=none.id).exists()
    row = Job.objects.get(job_id=sync.id)
    assert row.finished_at >= row.started_at and row.expires_at > row.finished_at
    assert row.lease_expires_at is None


def test_queue_option_limits_what_a_worker_runs(run_worker):
    here = other_queue.enqueue("x")
    there = add.enqueue(1, 1)
    run_worker(queues=["other"])
    assert here.refresh().status == "completed"
    assert there.refresh().status == "queued"


@pytest.mark.django_db(transaction=True)
def test_higher_priority_is_claimed_first(run_worker):
    record.enqueue("low")
    record.using(priority=5).enqueue("high")
    record.using(priority=-1).enqueue("lowest")
    record.enqueue("low-2")
    run_worker()
    assert list(Execution.objects.order_by("id").values_list("tag", flat=True)) == [
        "high",
        "low",
        "low-2",
        "lowest",
    ]


def test_run_after_delays_a_job(run_worker):
    later = add.using(run_after=timedelta(hours=1)).enqueue(1, 1)
    now = add.using(run_after=timezone.now() - timedelta(seconds=5)).enqueue(1, 1)
    run_worker()
    assert later.refresh().status == "queued"
    assert now.refresh().status == "completed"


@pytest.mark.django_db(transaction=True)
def test_a_group_runs_one_at_a_time_in_enqueue_order(run_worker):
    for index in range(6):
        record.using(group="user:1").enqueue(f"g1-{index}", sleep=0.02)
    record.using(group="user:2").enqueue("g2-0", sleep=0.02)
    run_worker(concurrency=4)
    rows = list(Job.objects.filter(group="user:1").order_by("id"))
    assert all(row.status == "completed" for row in rows)
    runs = list(Execution.objects.filter(tag__startswith="g1").order_by("started"))
    for earlier, later in itertools.pairwise(runs):
        assert earlier.at <= later.started, f"{earlier.tag} overlapped {later.tag}"
    tags = list(Execution.objects.order_by("id").values_list("tag", flat=True))
    assert [t for t in tags if t.startswith("g1")] == [f"g1-{i}" for i in range(6)]


def test_a_failing_group_job_holds_the_group_until_it_is_dead_lettered(run_worker, slow_retries):
    first = always_fails.using(group="g", max_attempts=2).enqueue()
    second = add.using(group="g").enqueue(1, 1)
    run_worker()
    assert first.refresh().status == "queued" and first.attempts == 1
    assert second.refresh().status == "queued", "a later group job overtook a retrying one"
    _drain_until(lambda: second.refresh().status == "completed", run_worker)
    assert first.refresh().status == "failed"
    assert first.refresh().finished_at <= second.refresh().started_at


def _drain_until(predicate, run_worker, timeout=10.0):
    """Run burst workers, making backed-off retries due at once, until ``predicate()``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "jobs did not finish in time"
        Job.objects.filter(status="queued").update(run_after=None)
        run_worker()


@pytest.fixture
def slow_retries(settings):
    """Retries far in the future, so one burst run shows exactly one attempt."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 60.0, "RETRY_BACKOFF_MAX": 60.0}


def test_retries_back_off_then_dead_letter(run_worker, slow_retries):
    handle = always_fails.enqueue("poison")
    first_try = timezone.now()
    run_worker()
    row = Job.objects.get(job_id=handle.id)
    assert (row.status, row.attempts, row.last_error) == ("queued", 1, "RuntimeError: poison")
    assert row.run_after > first_try + timedelta(seconds=29)
    _drain_until(lambda: handle.refresh().status == "failed", run_worker)
    assert handle.attempts == 3 and handle.error == "RuntimeError: poison"
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert (letter.name, letter.args, letter.attempts) == (always_fails.name, ["poison"], 3)
    assert letter.error == "RuntimeError: poison"
    assert "raise RuntimeError(message)" in letter.traceback
    outcome = JobResult.objects.get(job__job_id=handle.id)
    assert outcome.error == letter.error and outcome.traceback == letter.traceback


def test_backoff_grows_exponentially_with_jitter(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 1.0, "RETRY_BACKOFF_MAX": 100.0}
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (8, 100.0), (20, 100.0)]:
        delays = {backoff(attempt) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1, "no jitter"


def test_unknown_job_name_is_dead_lettered_and_the_worker_goes_on(run_worker, settings):
    # UNKNOWN_JOB_GRACE 0: no grace (tests/test_deploys.py has the give-back).
    settings.JOBQUEUE = {**settings.JOBQUEUE, "UNKNOWN_JOB_GRACE": 0}
    baker.make_recipe("tests.queued_job", job_id="ghost", name="deployed.later.job")
    ok = add.enqueue(1, 1)
    run_worker()
    ghost = get_job("ghost")
    assert ghost.status == "failed"
    assert "No job is registered as 'deployed.later.job'" in ghost.error
    assert DeadLetter.objects.get(job_id="ghost").attempts == 1
    assert ok.refresh().status == "completed"


def test_a_result_that_is_not_json_fails_the_attempt(run_worker):
    handle = returns_unserializable.using(max_attempts=1).enqueue()
    run_worker()
    assert handle.refresh().status == "failed"
    assert "returned a value that cannot be stored" in handle.error
    assert "set" in handle.error


def test_fencing_a_stale_worker_cannot_overwrite_a_newer_run():
    handle = add.enqueue(1, 2)
    now = timezone.now()
    jobs = Job.objects.all()
    (first,) = jobs.claim(queue=None, limit=5, worker="a", now=now, lease_until=now)
    # The lease expired and another worker took the job over: attempts moved on.
    Job.objects.filter(pk=first.id).update(status="queued")
    (second,) = jobs.claim(queue=None, limit=5, worker="b", now=now, lease_until=now)
    assert second.attempts == first.attempts + 1
    assert jobs.complete([(first.id, first.attempts)], now=now, expires_at=now) == {}
    assert handle.refresh().status == "running"
    assert jobs.renew_leases([(first.id, first.attempts)], now) == set()
    assert jobs.complete([(second.id, second.attempts)], now=now, expires_at=now) == {
        second.id: False
    }


def test_an_expired_lease_counts_as_an_attempt_and_the_job_runs_again(run_worker, slow_retries):
    handle = add.enqueue(2, 2)
    Job.objects.filter(job_id=handle.id).update(
        status="running",
        attempts=1,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
        worker="dead-worker",
    )
    run_worker()
    row = Job.objects.get(job_id=handle.id)
    assert row.status == "queued" and "Lease expired" in row.last_error
    assert "dead-worker" in row.last_error
    _drain_until(lambda: handle.refresh().status == "completed", run_worker)
    assert handle.attempts == 2 and handle.result == 4


def test_a_job_that_keeps_killing_its_worker_ends_as_a_dead_letter(run_worker):
    handle = add.using(max_attempts=2).enqueue(2, 2)
    Job.objects.filter(job_id=handle.id).update(
        status="running", attempts=2, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    run_worker()
    assert handle.refresh().status == "failed"
    assert "Lease expired" in DeadLetter.objects.get(job_id=handle.id).error


def test_expired_results_are_pruned(run_worker):
    kept = add.using(job_id="kept").enqueue(1, 1)
    gone = add.using(job_id="gone").enqueue(1, 1)
    Job.objects.filter(job_id=gone.id).update(
        status="completed", expires_at=timezone.now() - timedelta(seconds=1)
    )
    JobResult.objects.create(job=Job.objects.get(job_id="gone"), result=2)
    run_worker(queues=["nothing-here"])  # a burst run prunes on its first pass
    assert list(Job.objects.values_list("job_id", flat=True)) == [kept.id]
    assert not JobResult.objects.exists()


def test_release_hands_back_prefetched_jobs_without_using_an_attempt():
    handle = add.enqueue(1, 1)
    now = timezone.now()
    (claimed,) = Job.objects.claim(queue=None, limit=1, worker="w", now=now, lease_until=now)
    assert Job.objects.release([(claimed.id, claimed.attempts)]) == 1
    row = Job.objects.get(job_id=handle.id)
    assert (row.status, row.attempts, row.lease_expires_at) == ("queued", 0, None)


# -- results the database refuses, a locked database, a lost connection -----------------------


@pytest.mark.parametrize("poison", [huge_int, surrogate])
def test_a_result_the_database_refuses_fails_its_attempt_and_the_worker_lives(run_worker, poison):
    handle = poison.using(max_attempts=1).enqueue()
    run_worker()
    assert handle.refresh().status == "failed"
    assert "cannot be stored" in handle.error or "could not be stored" in handle.error


@pytest.mark.django_db(transaction=True)
def test_a_refused_outcome_does_not_undo_a_sibling_completion(monkeypatch):
    good = add.enqueue(1, 2)
    bad = echo.enqueue(1)
    worker = Worker(concurrency=2)
    now = timezone.now()
    claimed = Job.objects.claim(
        queue=None, limit=2, worker=worker.name, now=now, lease_until=now + timedelta(minutes=1)
    )
    by_name = {job.name: job for job in claimed}
    # An outcome that passed the JSON checks but that the database write still refuses.
    worker._done.extend(
        [
            Outcome(by_name[add.name], True, 0.01, result=3),
            Outcome(by_name[echo.name], True, 0.01, result=10**5000),
        ]
    )
    worker._flush()
    assert good.refresh().status == "completed" and good.result == 3
    row = Job.objects.get(job_id=bad.id)
    assert row.status == "queued" and "could not be stored" in row.last_error
    assert not worker._done


@pytest.mark.django_db(transaction=True)
def test_claimed_jobs_survive_a_locked_database_while_dead_lettering(settings):
    """A concurrent write between dead_letter()'s statements used to make SQLite fail with
    'database is locked' and orphan the other jobs of the claim."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's busy-snapshot behaviour")
    settings.JOBQUEUE = {**settings.JOBQUEUE, "UNKNOWN_JOB_GRACE": 0}  # dead-letter at once
    baker.make_recipe("tests.queued_job", job_id="ghost", name="deployed.later")
    handle = add.using(max_attempts=1).enqueue(1, 2)
    path = connection.settings_dict["NAME"]
    fired = []

    def concurrent_producer_commits(sender, instance, **kwargs):
        if sender is Job and instance.job_id == "ghost" and not fired:
            fired.append(1)
            other = sqlite3.connect(path, timeout=20)
            other.execute(
                "INSERT INTO testapp_execution (tag, pid, at) VALUES ('x', 0, '2020-01-01')"
            )
            other.commit()
            other.close()

    post_init.connect(concurrent_producer_commits, weak=False)
    try:
        Worker(burst=True, concurrency=2).run()
    finally:
        post_init.disconnect(concurrent_producer_commits)
    assert handle.refresh().status == "completed"
    assert Job.objects.get(job_id="ghost").status == "failed"


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_async_jobs_recover_from_a_lost_connection():
    async_count.enqueue()
    Worker(burst=True).run()
    pid = SyncToAsync.single_thread_executor.submit(
        lambda: (connection.ensure_connection(), connection.connection.info.backend_pid)[1]
    ).result()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    handles = [async_count.using(max_attempts=1).enqueue() for _ in range(2)]
    Worker(burst=True).run()
    assert [h.refresh().status for h in handles] == ["completed", "completed"]


# -- the main loop: idle and busy, the start banner, stop, signal receivers -------------------


def test_a_busy_worker_sleeps_while_its_job_runs(monkeypatch):
    calls = []
    real_sleep = Worker._sleep

    def counting_sleep(self, seconds):
        calls.append(seconds)
        return real_sleep(self, seconds)

    monkeypatch.setattr(Worker, "_sleep", counting_sleep)
    sleeper.enqueue(1.0)
    worker = Worker(burst=True, concurrency=1)
    started = time.monotonic()
    worker.run()
    assert sum(1 for s in calls if s == 0) < 50, "the main loop spun while the job ran"
    # A loop that goes round without calling _sleep at all: about one pass per
    # POLL_INTERVAL (0.1s here) and per timer, never thousands.
    assert worker.passes < 50 * (time.monotonic() - started) + 20, worker.passes


@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_does_not_spin(settings):
    """An idle worker passes its loop about once per POLL_INTERVAL (plus its upkeep timers),
    whether or not a spin would go through ``_sleep``. Measured over a window of about a
    second: stop() ends the run, in this thread so its statements can be counted too."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05}
    # Each "work available" message earlier tests left on the channel layer (Redis keeps
    # up to 100 per queue for a minute) would wake the worker once: not what is measured.
    async_to_sync(channel_layers.make_backend("default").flush)()
    worker = Worker()
    stopper = threading.Timer(1.0, worker.stop)
    started = time.monotonic()
    stopper.start()
    try:
        with CaptureQueriesContext(connection) as queries:
            worker.run()
    finally:
        stopper.cancel()
    elapsed = time.monotonic() - started
    polls = elapsed / 0.05
    assert worker.processed == 0
    assert worker.passes <= 2 * polls + 20, f"{worker.passes} passes in {elapsed:.2f}s"
    claims = [q for q in queries.captured_queries if "RETURNING" in q["sql"]]
    assert len(claims) <= polls + 5, f"{len(claims)} claims in {elapsed:.2f}s"


def test_the_start_banner_lists_the_job_names_the_worker_knows(run_worker, caplog):
    """A job whose module was never imported is missing from the banner, noticed at start."""
    caplog.set_level(logging.INFO, logger="django_jobqueue.worker")
    run_worker()
    (banner,) = [r.getMessage() for r in caplog.records if "worker started" in r.getMessage()]
    names = banner.split(" jobs=", 1)[1].split(",")
    assert {add.name, echo.name, sleeper.name, async_count.name} <= set(names)
    assert names == sorted(names)


def test_stop_finishes_the_running_job(transactional_db):
    import threading

    handle = record.enqueue("slow", sleep=0.5)
    worker = Worker()
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_until(lambda: Job.objects.filter(job_id=handle.id, status="running").exists())
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.refresh().status == "completed"
    assert Execution.objects.filter(tag="slow").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_group_advances_without_waiting_for_the_next_poll(run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 30}
    for index in range(5):
        record.using(group="chain").enqueue(f"c-{index}")
    started = time.monotonic()
    run_worker(concurrency=4)
    assert Execution.objects.count() == 5
    assert time.monotonic() - started < 5


def test_a_signal_receiver_that_raises_does_not_break_the_worker(run_worker, caplog):
    from django_jobqueue import signals

    def broken(**kwargs):
        raise ValueError("receiver bug")

    signals.job_finished.connect(broken)
    signals.job_started.connect(broken)
    try:
        handle = add.enqueue(1, 1)
        run_worker()
    finally:
        signals.job_finished.disconnect(broken)
        signals.job_started.disconnect(broken)
    assert handle.refresh().status == "completed"
    assert "signal receiver" in caplog.text and "receiver bug" in caplog.text
    assert "discarded" not in caplog.text


@requires_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pooled", [False, True])
def test_the_worker_sets_no_session_parameter_behind_a_transaction_pooler(
    settings, monkeypatch, pooled
):
    """Behind PgBouncer (``DISABLE_SERVER_SIDE_CURSORS``) a session ``SET`` would outlive the
    worker's transaction and reach the next client of that server connection: its enqueues
    would commit without waiting for the disk. The worker turns synchronous_commit off on its
    own session only when no pooler shares it."""
    from django.db import connection

    from django_jobqueue.worker.connection import Connection

    if PGBOUNCER and not pooled:
        pytest.skip(
            "through a real PgBouncer the session SET this case makes would reach the "
            "pooler's other clients: the very leak the pooled case proves absent"
        )
    settings.JOBQUEUE = {**settings.JOBQUEUE, "WORKER_SYNCHRONOUS_COMMIT": False}
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", pooled)
    connection.close()
    Connection("default", "test", lambda seconds: None).prepare()
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == ("on" if pooled else "off")
    connection.close()
