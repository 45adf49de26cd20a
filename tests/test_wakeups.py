"""Waking workers: a job enqueued and then waited for never waits for a poll.

Both sides poll every 30 s here, so only the work-available and finished notifications can
answer in time: a lost wake-up shows as a wait that takes seconds instead of milliseconds.
"""

from __future__ import annotations

import json
import time

import pytest
from django.db import transaction

from tests.conftest import requires_redis, wait_until
from tests.testapp.jobs import add

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True), requires_redis]

#: Far above a notified round trip (milliseconds), far below the 30 s poll interval.
SLOW = 2.0


@pytest.fixture(params=["default", "pubsub"])
def notified_worker(request, worker_processes, settings):
    """One worker and this process, both polling every 30 s, on one of the Redis layers."""
    overrides = {"POLL_INTERVAL": 30, "CHANNEL_LAYER": request.param}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    return proc


def _timed(call):
    started = time.monotonic()
    value = call()
    return value, time.monotonic() - started


def test_enqueue_then_wait_never_takes_a_poll_interval(notified_worker):
    slow = []
    for i in range(100):
        handle = add.enqueue(i, 1)
        value, took = _timed(lambda h=handle: h.wait(timeout=10))
        assert value == i + 1
        if took > SLOW:
            slow.append((i, round(took, 2)))
    assert slow == []


def test_enqueue_in_atomic_then_wait_never_takes_a_poll_interval(notified_worker):
    slow = []
    for i in range(50):
        with transaction.atomic():
            handle = add.enqueue(i, 2)
        value, took = _timed(lambda h=handle: h.wait(timeout=10))
        assert value == i + 2
        if took > SLOW:
            slow.append((i, round(took, 2)))
    assert slow == []


async def test_aenqueue_then_await_result_never_takes_a_poll_interval(notified_worker):
    slow = []
    for i in range(50):
        handle = await add.aenqueue(i, 3)
        started = time.monotonic()
        assert await handle.await_result(timeout=10) == i + 3
        if time.monotonic() - started > SLOW:
            slow.append(i)
    assert slow == []
