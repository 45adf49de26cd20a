"""Waiting at scale: bursts of waiters in one process on real Redis and a real worker (every
waiter answered by its notification, none left to the safety-net poll, nothing left in
Redis), the safety-net poll's query count, and the result carried by "finished"."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from django.conf import settings as django_settings

from django_jobqueue.notifications import hub
from tests.conftest import POSTGRES, requires_redis, run_concurrently, wait_until
from tests.testapp.jobs import add

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def _redis():
    import redis

    address = django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"]
    return redis.Redis.from_url(address)


def _group_keys(client) -> list[bytes]:
    prefix = django_settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    return list(client.scan_iter(match=f"{prefix}:group:djq.done.*", count=1000))


def _start(worker_processes, settings, caplog):
    # Polling every 30 s on both sides: within the test's bounds only notifications answer.
    # NOTIFY_TIMEOUT 5 s: on a loaded 2-core CI machine one of a thousand joins made at once
    # can take longer than the default 0.5 s (the hub's loop thread waits for the GIL behind
    # the test's own threads); this test is about capacity, the latency has its benchmark.
    overrides = {"POLL_INTERVAL": 30, "NOTIFY_TIMEOUT": 5, "CHANNEL_LAYER": "default"}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    proc = worker_processes.start("--concurrency", "8", env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    caplog.set_level(logging.INFO, logger="channels_redis")
    caplog.set_level(logging.INFO, logger="django_jobqueue")
    return proc


def _assert_every_waiter_was_notified(caplog, client, worker_log: str) -> None:
    # The worker's group_send drops the "finished" of a waiter whose channel is full.
    assert "over capacity" not in worker_log
    problems = [
        record.getMessage()
        for record in caplog.records
        # channels_redis logs (INFO) each group_send whose message a full channel dropped;
        # the hub warns when it degrades (polling for a while) and notes each job the
        # safety-net poll found finished before its notification came.
        if record.name.startswith(("django_jobqueue", "channels_redis"))
        and (
            record.levelno >= logging.WARNING
            or "over capacity" in record.getMessage()
            or "safety-net poll" in record.getMessage()
        )
    ]
    assert problems == []
    assert hub().available
    # Every group the waiters joined is left (each would otherwise live 24 h in Redis).
    wait_until(lambda: _group_keys(client) == [], timeout=10)


@requires_redis
@pytest.mark.skipif(POSTGRES, reason="a connection per thread: PostgreSQL allows 100 here")
@pytest.mark.parametrize("count", [300, 1000])
def test_a_burst_of_thread_waiters(worker_processes, settings, caplog, count):
    proc = _start(worker_processes, settings, caplog)
    client = _redis()
    try:
        calls = [(lambda i=i: add.using(timeout=25).enqueue_and_wait(i, 1)) for i in range(count)]
        assert run_concurrently(*calls, timeout=60) == [i + 1 for i in range(count)]
        _assert_every_waiter_was_notified(caplog, client, worker_processes.log(proc))
    finally:
        client.close()


@requires_redis
@pytest.mark.parametrize("count", [300, 1000])
async def test_a_burst_of_async_waiters(worker_processes, settings, caplog, count):
    proc = await asyncio.to_thread(_start, worker_processes, settings, caplog)
    client = _redis()
    try:
        waiters = [add.using(timeout=25).aenqueue_and_wait(i, 1) for i in range(count)]
        assert await asyncio.gather(*waiters) == [i + 1 for i in range(count)]
        await asyncio.to_thread(
            _assert_every_waiter_was_notified, caplog, client, worker_processes.log(proc)
        )
    finally:
        client.close()


@pytest.mark.parametrize("layer", [pytest.param("default", marks=requires_redis), None])
async def test_waiters_are_polled_by_one_query_per_interval(settings, monkeypatch, layer):
    """300 waiters of jobs no worker takes: while they wait, the process reads the job table
    once per safety-net interval for all of them (POLL_INTERVAL with notifications,
    a quarter of it without), plus one read of each job at its deadline."""
    from django.db.backends.utils import CursorWrapper

    from django_jobqueue.notifications import runtime

    # NOTIFY_TIMEOUT 5 s, as in the bursts above: one of 300 joins made at once can take over
    # the default 0.5 s on a loaded machine, and a degraded link polls four times as often.
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "POLL_INTERVAL": 0.4,
        "NOTIFY_TIMEOUT": 5,
        "CHANNEL_LAYER": layer,
    }
    batched, single = [], []
    execute = CursorWrapper.execute

    def counting(self, sql, params=None):
        if "IN (" in sql and '"status" IN' in sql:
            batched.append(sql)
        elif "WHERE j.job_id = %s" in sql:
            single.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", counting)
    seconds = await asyncio.to_thread(runtime.safety_net.interval)
    count, timeout = 300, 2.0
    started = asyncio.get_running_loop().time()
    waiters = [
        add.using(queue="nobody-serves-this", timeout=timeout).aenqueue_and_wait(i, 1)
        for i in range(count)
    ]
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    elapsed = asyncio.get_running_loop().time() - started
    assert all(type(outcome).__name__ == "JobTimeoutError" for outcome in outcomes)
    # One read of each job at its deadline (and one after a late join, at most).
    assert len(single) <= 2 * count
    assert 1 <= len(batched) <= elapsed / seconds + 2, (len(batched), elapsed, seconds)


@requires_redis
@pytest.mark.parametrize("alias", ["default", "pubsub"])
def test_a_small_result_rides_in_the_finished_message(worker_processes, settings, alias):
    """A real worker's "finished" carries a small result to the waiter (no read of the
    job needed); a result over RESULT_IN_MESSAGE_BYTES does not (the waiter reads it)."""
    from django_jobqueue.base import JobState
    from django_jobqueue.models import Job
    from django_jobqueue.notifications import ThreadWaiter
    from django_jobqueue.notifications.names import RESULT_IN_MESSAGE_BYTES
    from tests.testapp.jobs import other_queue

    overrides = {"POLL_INTERVAL": 30, "CHANNEL_LAYER": alias}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    small = {"n": [1, 2.5, None, True], "s": "é" * 10}
    large = "x" * (RESULT_IN_MESSAGE_BYTES + 10)
    waiters = {"small-result": ThreadWaiter(), "large-result": ThreadWaiter()}
    for (job_id, waiter), value in zip(waiters.items(), (small, large), strict=True):
        assert hub().start_subscribe(job_id, waiter).confirm()
        other_queue.using(job_id=job_id).enqueue(value)
        Job.objects.subscribe(job_id)  # waited for: its worker sends "finished"
    try:
        worker_processes.start("--queue", "other", env={"DJQ_JOBQUEUE": json.dumps(overrides)})
        for waiter in waiters.values():
            assert waiter.event.wait(20)
    finally:
        for job_id, waiter in waiters.items():
            hub().unsubscribe(job_id, waiter)
    assert waiters["small-result"].state == JobState("completed", 1, small, "")
    assert waiters["large-result"].state is None
    for job_id, value in (("small-result", small), ("large-result", large)):
        assert other_queue.using(job_id=job_id, timeout=5).enqueue_and_wait(value) == value
