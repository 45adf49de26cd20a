"""The channel layer through Redis Sentinel (``scripts/services --sentinel`` starts a primary,
its replica and a Sentinel): a failover while 200 callers wait and a queue drains loses no
job and no waiter, and notifications follow the new primary."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess

import pytest
from django.db import connections

from django_jobqueue.models import DeadLetter, Job
from tests.conftest import ROOT, requires_redis, wait_until
from tests.testapp.jobs import add, sleeper

pytestmark = [
    requires_redis,
    pytest.mark.redis,
    pytest.mark.subprocess,
    pytest.mark.django_db(transaction=True),
]

SENTINEL = ("127.0.0.1", 26379)
MASTER = "djq"


@pytest.fixture(scope="module")
def sentinel():
    """A client of the Sentinel, the topology started (or found running) by the project's
    own script. Skipped where redis-sentinel is not installed and cannot be (not as root)."""
    import redis

    if shutil.which("redis-sentinel") is None and shutil.which("apt-get") is None:
        pytest.skip("redis-sentinel is not installed")
    subprocess.run([str(ROOT / "scripts" / "services"), "--sentinel"], check=True)
    client = redis.Redis(*SENTINEL, socket_timeout=2, decode_responses=True)
    yield client
    client.close()


def _primary(sentinel) -> int:
    _host, port = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
    return int(port)


def _replica_in_sync(sentinel) -> bool:
    """Sentinel sees a replica whose link to the primary is up: a failover now promotes it."""
    replicas = sentinel.sentinel_slaves(MASTER)
    return any(r.get("master-link-status") == "ok" and not r.get("is_sdown") for r in replicas)


def _count(model, **filters) -> int:
    return model.objects.filter(**filters).count()


async def _in_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a helper thread that closes its database connection
    afterwards."""

    def call():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    return await asyncio.to_thread(call)


def _fail_over(sentinel) -> int:
    """Ask Sentinel to fail the primary over; return the new primary's port once it serves."""
    import redis

    before = _primary(sentinel)
    wait_until(lambda: _replica_in_sync(sentinel), timeout=30)
    sentinel.execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_until(lambda: _primary(sentinel) != before, timeout=30)
    after = _primary(sentinel)
    new = redis.Redis("127.0.0.1", after, socket_timeout=2, decode_responses=True)
    try:
        wait_until(lambda: new.info("replication")["role"] == "master", timeout=30)
    finally:
        new.close()
    return after


async def test_a_failover_while_callers_wait_and_a_queue_drains_loses_nothing(
    worker_processes, settings, sentinel, caplog
):
    overrides = {"CHANNEL_LAYER": "sentinel", "POLL_INTERVAL": 1, "NOTIFY_TIMEOUT": 5}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    proc = await _in_thread(
        worker_processes.start,
        "--concurrency",
        "4",
        env={"DJQ_JOBQUEUE": json.dumps(overrides)},
    )
    await _in_thread(wait_until, lambda: "worker started" in worker_processes.log(proc), 30)
    caplog.set_level(logging.INFO, logger="django_jobqueue")

    # A draining queue: 300 jobs of 20 ms ahead of the waiters' jobs, about 1.5 s of work.
    await _in_thread(sleeper.enqueue_many, [(0.02,)] * 300)
    waiters = [
        asyncio.ensure_future(add.using(timeout=90).aenqueue_and_wait(i, 1)) for i in range(200)
    ]

    def some_done() -> bool:
        return _count(Job, status="completed") >= 30

    await _in_thread(wait_until, some_done, 60)
    before = await _in_thread(_primary, sentinel)
    after = await _in_thread(_fail_over, sentinel)
    assert after != before

    # Every waiter gets its own value; every job ran to completion; nothing dead-lettered.
    assert await asyncio.gather(*waiters) == [i + 1 for i in range(200)]

    def all_completed() -> bool:
        return _count(Job, status="completed") == 500

    await _in_thread(wait_until, all_completed, 60)
    assert await _in_thread(_count, DeadLetter) == 0

    # Notifications go through the new primary: with the safety-net poll 60 s apart, only a
    # notification answers these waiters within their 30 s.
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 60}
    caplog.clear()
    values = await asyncio.gather(
        *(add.using(timeout=30).aenqueue_and_wait(i, 2) for i in range(20))
    )
    assert values == [i + 2 for i in range(20)]
    assert not [r for r in caplog.records if "safety-net poll" in r.getMessage()]
