"""Regression tests for bugs found in review: each failed before its fix."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import channel_layers
from django.db import connection, transaction
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import JobTimeoutError, SerializationError, job
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.handles import JobHandle
from django_jobqueue.models import Job
from django_jobqueue.notifications import AsyncWaiter, ThreadWaiter, group_for, hub, reset_hub
from django_jobqueue.worker import Outcome, Worker
from tests.conftest import requires_postgres, wait_until
from tests.testapp.jobs import add
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db


@job
def sleeper(seconds):
    time.sleep(seconds)
    return seconds


@job
def huge_int():
    return 10**5000


@job
def surrogate():
    return "\ud800"


@job
def echo(value):
    return value


@job
async def async_count():
    return await Execution.objects.acount()


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
    worker._claim(2)
    by_name = {claimed.name: claimed for claimed in worker._buffer}
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


@pytest.mark.parametrize(
    "value", [10**5000, 1e300, 1e16, "\ud800"], ids=["huge-int", "1e300", "1e16", "surrogate"]
)
def test_arguments_that_would_not_come_back_equal_are_refused(value):
    with pytest.raises(SerializationError):
        echo.enqueue(value)
    assert not Job.objects.exists()


def test_floats_that_round_trip_are_accepted():
    handle = echo.enqueue([1.5, 1e15, 2.5e-10, -0.0])
    assert Job.objects.get(job_id=handle.id).args == [[1.5, 1e15, 2.5e-10, -0.0]]


def test_non_str_keyword_names_are_refused():
    with pytest.raises(SerializationError, match="keyword argument names must be str"):
        echo.enqueue_many([{1: "x"}])
    assert not Job.objects.exists()


def test_aware_run_after_with_use_tz_false_is_refused(settings):
    settings.USE_TZ = False
    with pytest.raises(InvalidJobError, match="USE_TZ is False"):
        echo.using(run_after=datetime(2030, 1, 1, tzinfo=UTC)).enqueue(1)


def test_run_after_overflow_is_refused():
    with pytest.raises(InvalidJobError, match="too far"):
        echo.using(run_after=timedelta.max).enqueue(1)


@pytest.mark.django_db(transaction=True)
def test_claimed_jobs_survive_a_locked_database_while_dead_lettering():
    """A concurrent write between dead_letter()'s statements used to make SQLite fail with
    'database is locked' and orphan the other jobs of the claim."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's busy-snapshot behaviour")
    Job.objects.create(
        job_id="ghost", name="deployed.later", queue="default", max_attempts=3, result_ttl=60
    )
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


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_over_several_batches_writes_all_or_nothing():
    calls = [(i,) for i in range(1000)] + [({"x": 1},), (object(),)]
    with pytest.raises(SerializationError):
        echo.enqueue_many(calls)
    assert Job.objects.count() == 0
    handles = echo.enqueue_many([(i,) for i in range(2500)])
    assert len(handles) == 2500 and all(h.created for h in handles)
    assert Job.objects.count() == 2500


def test_a_waiter_whose_loop_closed_does_not_stop_notifications():
    notifier = hub()

    async def stale_async_waiter():
        await notifier.start_subscribe("j1", AsyncWaiter()).aconfirm()

    asyncio.run(stale_async_waiter())
    notifier.job_finished(["j1"])
    waiter = ThreadWaiter()
    notifier.start_subscribe("j2", waiter).confirm()
    notifier.job_finished(["j2"])
    assert waiter.event.wait(5), "no 'finished' was delivered in this process any more"


def test_one_cancelled_waiter_does_not_undo_the_join_other_waiters_share(settings):
    """Local waiters of one job share its group join. An async waiter cancelled while the
    join is in flight (an ASGI client went away) must neither cancel it for a sync waiter
    of the same job nor leave the process's channel in the group once both are gone."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "default"}
    reset_hub()
    notifier = hub()
    layer = notifier._layer
    answer = threading.Event()
    original = layer.group_add

    async def slow_group_add(group, channel):
        await original(group, channel)  # done on the server; the answer takes a while
        while not answer.is_set():
            await asyncio.sleep(0.005)

    layer.group_add = slow_group_add
    job_id = "shared-join"
    outcome: dict[str, object] = {}

    def sync_waiter() -> None:
        waiter = ThreadWaiter()
        subscription = notifier.start_subscribe(job_id, waiter)
        outcome["shared"] = True
        try:
            outcome["confirm"] = subscription.confirm()
        except BaseException as exc:  # what the bug raised: CancelledError
            outcome["confirm"] = exc
        finally:
            notifier.unsubscribe(job_id, waiter)

    async def async_waiter() -> None:
        waiter = AsyncWaiter()
        subscription = notifier.start_subscribe(job_id, waiter)
        try:
            await subscription.aconfirm()
        finally:
            notifier.unsubscribe(job_id, waiter)

    async def main() -> None:
        task = asyncio.ensure_future(async_waiter())
        while job_id not in notifier._joins:
            await asyncio.sleep(0.005)
        thread = threading.Thread(target=sync_waiter)
        thread.start()
        while "shared" not in outcome:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        answer.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert outcome["confirm"] is True
    group = group_for(job_id)
    wait_until(lambda: not layer.groups.get(group), timeout=5)
    assert notifier._joins == {} and notifier._waiters == {}


@pytest.mark.parametrize("timeout", [float("nan"), 0, -1, "5"])
def test_wait_refuses_a_bad_timeout(timeout):
    handle = echo.enqueue(1)
    with pytest.raises(InvalidJobError, match="timeout"):
        handle.wait(timeout=timeout)
    with pytest.raises(InvalidJobError, match="timeout"):
        asyncio.run(handle.await_result(timeout=timeout))


def test_wait_on_a_finished_handle_still_validates(run_worker):
    handle = echo.enqueue(1)
    run_worker()
    handle.refresh()
    assert handle.wait(timeout=1) == 1
    assert isinstance(handle, JobHandle)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_group_never_runs_two_jobs_when_ids_commit_out_of_order():
    inserted, release = threading.Event(), threading.Event()

    def producer():
        with transaction.atomic():
            echo.using(group="g", job_id="first").enqueue(1)  # takes the lower id
            inserted.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=producer)
    thread.start()
    inserted.wait(10)
    echo.using(group="g", job_id="second").enqueue(2)  # higher id, committed first
    now = timezone.now()
    kw = {"queue": None, "limit": 10, "worker": "w", "now": now, "lease_until": now}
    assert [j.job_id for j in Job.objects.claim(**kw)] == ["second"]
    release.set()
    thread.join()
    assert Job.objects.claim(**kw) == [], "a group ran two jobs at once"


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_overtaking_finds_a_claimed_job_with_an_earlier_job_of_its_group_active():
    first = echo.using(group="g").enqueue(1)
    second = echo.using(group="g").enqueue(2)
    Job.objects.filter(job_id=second.id).update(status="running", attempts=1)
    rows = {row.job_id: row for row in Job.objects.all()}
    assert Job.objects.overtaking([(rows[second.id].pk, 1)]) == {rows[second.id].pk}
    Job.objects.filter(job_id=first.id).update(status="completed")
    assert Job.objects.overtaking([(rows[second.id].pk, 1)]) == set()


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


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_waiter_behind_an_uncommitted_job_of_its_id_still_times_out():
    inserted = threading.Event()

    def holder():
        with transaction.atomic():
            echo.using(job_id="locked").enqueue(1)
            inserted.set()
            time.sleep(4)
        connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    inserted.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(JobTimeoutError):
            echo.using(job_id="locked", timeout=0.5).enqueue_and_wait(1)
        assert time.monotonic() - started < 2

        async def unrelated_waits():
            blocked = [
                asyncio.ensure_future(echo.using(job_id="locked", timeout=1).aenqueue_and_wait(1))
                for _ in range(4)
            ]
            await asyncio.sleep(0.2)
            began = time.monotonic()
            with pytest.raises(JobTimeoutError):
                await echo.using(timeout=1).aenqueue_and_wait(2)  # no worker runs it
            took = time.monotonic() - began
            await asyncio.gather(*blocked, return_exceptions=True)
            return took

        assert asyncio.run(unrelated_waits()) < 2
    finally:
        thread.join()


def test_the_start_banner_lists_the_job_names_the_worker_knows(run_worker, caplog):
    """A job whose module was never imported is missing from the banner, noticed at start."""
    caplog.set_level(logging.INFO, logger="django_jobqueue.worker")
    run_worker()
    (banner,) = [r.getMessage() for r in caplog.records if "worker started" in r.getMessage()]
    names = banner.split(" jobs=", 1)[1].split(",")
    assert {add.name, echo.name, sleeper.name, async_count.name} <= set(names)
    assert names == sorted(names)
