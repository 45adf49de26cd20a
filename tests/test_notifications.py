"""The notifications hub: settings changes, what it says about itself, hostile input on the
layer, and what it leaves behind in Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import close_old_connections
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from django_jobqueue import JobTimeoutError
from django_jobqueue.notifications import (
    FINISHED_TYPE,
    WORK_TYPE,
    AsyncWaiter,
    IdleFlag,
    Link,
    ThreadWaiter,
    Waiters,
    group_for,
    hub,
    logger,
    reset_hub,
    work_channel,
)
from django_jobqueue.notifications import link as link_module
from django_jobqueue.notifications.names import finished_job_id, finished_message, is_work
from tests.conftest import REDIS, requires_redis, wait_until
from tests.testapp.jobs import add, async_add

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


@pytest.fixture
def in_memory(settings: Any) -> Any:
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "default"}
    return settings


def _ignored(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("notification ignored")]


# -- settings changes, logger, what the hub says about itself ------------------------------


def test_override_settings_gets_a_fresh_hub():
    first = hub()
    with override_settings(CHANNEL_LAYERS=IN_MEMORY):
        inside = hub()
        assert inside is not first
        assert first.closed
        assert inside.mode == "in-memory"  # the overridden layer, same alias
    after = hub()
    assert after is not inside and inside.closed
    assert after.mode == ("redis" if REDIS else "in-memory")
    with override_settings(JOBQUEUE={**django_settings.JOBQUEUE, "CHANNEL_LAYER": None}):
        assert hub().mode == "off"
    assert hub().mode == after.mode and hub() is not after


def test_the_logger_is_a_child_of_django_jobqueue():
    assert logger.name == "django_jobqueue.notifications"
    assert logger.parent is logging.getLogger("django_jobqueue")


def test_no_channel_layers_setting_means_polling_silently(settings, caplog):
    del settings.CHANNEL_LAYERS
    assert "CHANNEL_LAYER" not in settings.JOBQUEUE  # the embedded default: "default"
    caplog.set_level(logging.DEBUG, logger="django_jobqueue")
    notifier = hub()
    assert not notifier.enabled
    assert (notifier.mode, notifier.describe()) == ("off", "off (polling)")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    [record] = [r for r in caplog.records if "notifications off" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert record.name == "django_jobqueue.notifications"
    assert "polling" in record.getMessage() and "'default'" in record.getMessage()


def test_an_explicit_layer_that_cannot_be_made_warns_with_a_reason(settings, caplog):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "jobqueue"}
    assert not hub().enabled
    [record] = [r for r in caplog.records if "notifications off" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "'jobqueue', which is not in CHANNEL_LAYERS" in record.getMessage()
    caplog.clear()
    settings.CHANNEL_LAYERS = {"jobqueue": {"BACKEND": "no.such.Layer"}}
    assert not hub().enabled
    [record] = [r for r in caplog.records if "notifications off" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "InvalidChannelLayerError: Cannot import BACKEND 'no.such.Layer'" in record.getMessage()


@pytest.mark.django_db(transaction=True)
def test_the_worker_says_which_notifications_it_has(in_memory, run_worker, caplog):
    caplog.set_level(logging.INFO, logger="django_jobqueue")
    assert hub().describe() == "in-memory (this process only)"
    run_worker()
    assert "notifications=in-memory (this process only)" in caplog.text
    assert "notifications=on" not in caplog.text


@requires_redis
@pytest.mark.parametrize(
    ("alias", "name"), [("default", "RedisChannelLayer"), ("pubsub", "RedisPubSubChannelLayer")]
)
def test_a_redis_hub_describes_itself(settings, alias, name):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": alias}
    notifier = hub()
    assert notifier.mode == "redis"
    assert notifier.describe() == f"on ({name})"


# -- local waiters: a loop that closed, a cancelled waiter sharing a join ---------------------


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
    layer = notifier.layer
    joining, shared, answer = threading.Event(), threading.Event(), threading.Event()
    original = layer.group_add

    async def slow_group_add(group, channel):
        await original(group, channel)  # done on the server; the answer takes a while
        joining.set()
        await asyncio.to_thread(answer.wait, 10)

    layer.group_add = slow_group_add
    job_id = "shared-join"
    outcome: dict[str, object] = {}

    def sync_waiter() -> None:
        waiter = ThreadWaiter()
        subscription = notifier.start_subscribe(job_id, waiter)
        shared.set()
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
        assert await asyncio.to_thread(joining.wait, 10), "the join never reached the layer"
        thread = threading.Thread(target=sync_waiter)
        thread.start()
        assert await asyncio.to_thread(shared.wait, 10), "the sync waiter never subscribed"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        answer.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)

    asyncio.run(main())
    assert outcome["confirm"] is True
    group = group_for(job_id)
    wait_until(lambda: not layer.groups.get(group), timeout=5)
    assert notifier.waited_for() == []


# -- hostile input -------------------------------------------------------------------------


def _process_channel(notifier: Any) -> str:
    waiter = ThreadWaiter()
    assert notifier.start_subscribe("warm-up", waiter).confirm()
    notifier.unsubscribe("warm-up", waiter)
    channel = notifier.process_channel
    assert channel is not None
    return channel


FORGED_DICTS: list[dict[str, Any]] = [
    {},
    {"type": 5},
    {"type": ["jobqueue.finished"]},
    {"type": FINISHED_TYPE},
    {"type": FINISHED_TYPE, "job_id": 5},
    {"type": FINISHED_TYPE, "job_id": ""},
    {"type": FINISHED_TYPE, "job_id": "x" * 10_000},
    {"type": FINISHED_TYPE, "job_id": ["j1"]},
    {"type": FINISHED_TYPE, "job_id": {"nested": b"\x00\n\x1b[31m"}},
    {"type": WORK_TYPE},
]


def test_forged_messages_on_the_process_channel_are_ignored_and_logged(in_memory, caplog):
    notifier = hub()
    channel = _process_channel(notifier)
    for message in FORGED_DICTS:
        notifier.submit(lambda layer, m=message: layer.send(channel, m)).result(5)
    wait_until(lambda: _ignored(caplog))
    waiter = ThreadWaiter()
    assert notifier.start_subscribe("j1", waiter).confirm()
    notifier.job_finished(["j1"])
    assert waiter.event.wait(5), "the receive loop no longer delivers"
    [record] = _ignored(caplog)  # rate-limited
    assert record.levelno == logging.WARNING
    assert record.name == "django_jobqueue.notifications"
    assert "\n" not in record.getMessage() and "x" * 200 not in record.getMessage()


def test_forged_work_available_messages_are_ignored_and_logged(in_memory, caplog):
    notifier = hub()
    woken: list[int] = []
    idle = IdleFlag()
    idle.set(True)
    notifier.listen_for_work(lambda: ["forged"], lambda: woken.append(1), idle)
    channel = work_channel("forged")
    for message in [*FORGED_DICTS, {"type": WORK_TYPE, "extra": 1}]:  # two well-formed
        notifier.submit(lambda layer, m=message: layer.send(channel, m)).result(5)
    wait_until(lambda: len(woken) == 2)
    [record] = _ignored(caplog)
    assert "work-available" in record.getMessage()


def test_a_receive_loop_that_dies_is_logged_and_started_again(in_memory, caplog, monkeypatch):
    notifier = hub()
    _process_channel(notifier)
    handle = Waiters.handle

    def broken(self: Waiters, message: object) -> None:
        monkeypatch.setattr(Waiters, "handle", handle)
        raise RuntimeError("a bug in the handler")

    monkeypatch.setattr(Waiters, "handle", broken)
    waiter = ThreadWaiter()
    assert notifier.start_subscribe("j1", waiter).confirm()
    notifier.job_finished(["j1"])  # taken by the broken handler: the loop dies
    wait_until(lambda: "stopped unexpectedly" in caplog.text)
    assert "'finished' receive loop stopped unexpectedly; starting it again" in caplog.text
    assert "a bug in the handler" in caplog.text
    notifier.job_finished(["j1"])
    assert waiter.event.wait(5), "the receive loop was not started again"


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)
_near_misses = st.fixed_dictionaries(
    {"type": st.sampled_from([FINISHED_TYPE, WORK_TYPE]) | _values},
    optional={"job_id": st.text(max_size=300) | _values, "extra": _values},
)
_job_ids = st.text(min_size=1, max_size=255)


@hypothesis_settings(max_examples=300, deadline=None)
@given(junk=st.lists(_values | _near_misses, max_size=5), job_id=_job_ids)
def test_fuzz_the_finished_handler(junk, job_id):
    """Whatever arrives, nothing escapes the handler; a well-formed message is delivered to
    exactly the waiters of its job, before and after any junk."""
    waiters = Waiters(Link(None))
    mine, other = ThreadWaiter(), ThreadWaiter()
    waiters.start_subscribe(job_id, mine)
    waiters.start_subscribe(job_id + "-other", other)
    notified = {job_id: False, job_id + "-other": False}
    for value in junk:
        waiters.handle(value)
        assert is_work(value) == (isinstance(value, dict) and value.get("type") == WORK_TYPE)
        delivered = finished_job_id(value)
        if delivered is not None:
            assert value["type"] == FINISHED_TYPE and value["job_id"] == delivered
            assert 0 < len(delivered) <= 255
            if delivered in notified:
                notified[delivered] = True
        assert mine.event.is_set() == notified[job_id]
        assert other.event.is_set() == notified[job_id + "-other"]
    mine.event.clear()
    other.event.clear()
    waiters.handle(finished_message(job_id))
    assert mine.event.is_set() and not other.event.is_set()
    assert is_work({"type": WORK_TYPE}) and not is_work({"type": FINISHED_TYPE})


# With real Redis: forged messages on the waiting process's channel and on the worker's work
# channel, then a wait that only notifications can answer in time (POLL_INTERVAL is 30 s).


def _forge(alias: str, channel: str, config: dict[str, Any]) -> None:
    import redis
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    client = redis.Redis.from_url(config["hosts"][0]["address"])
    values: list[Any] = [[1, 2], 5, "text", None, *FORGED_DICTS]
    try:
        if alias == "pubsub":
            packer: Any = RedisPubSubChannelLayer(**config)  # only its serializer: msgpack
            raw = [b"\x92\x01\x02", b"\xc1", b""] + [packer.serialize(v) for v in values]
            for target in (channel, work_channel("default")):
                assert client.pubsub_numsub(target)[0][1] >= 1, f"nobody listens on {target}"
                for payload in raw:
                    client.publish(target, payload)
            return
        packer = RedisChannelLayer(**config)  # only its serializer: a random prefix + msgpack
        prefix = config["prefix"]
        raw = [b"\x00" * 12 + b"\xc1", b"short"] + [packer.serialize(v) for v in values]
        # Addressed to the process channel, the way RedisChannelLayer.send() addresses them.
        addressed = [packer.serialize({**m, "__asgi_channel__": channel}) for m in FORGED_DICTS]
        process_key = prefix + channel[: channel.index("!") + 1]
        for key, members in ((process_key, raw + addressed), (prefix + "djq.work.default", raw)):
            client.zadd(key, {member: time.time() for member in members})
            client.expire(key, 60)
    finally:
        client.close()


@requires_redis
@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("alias", ["default", "pubsub"])
def test_forged_messages_do_not_stop_notifications(worker_processes, settings, caplog, alias):
    overrides = {"POLL_INTERVAL": 30, "CHANNEL_LAYER": alias}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    assert add.using(timeout=20).enqueue_and_wait(1, 1) == 2  # the channels exist now
    notifier = hub()
    channel = notifier.process_channel
    assert channel is not None
    _forge(alias, channel, settings.CHANNEL_LAYERS[alias]["CONFIG"])
    wait_until(lambda: _ignored(caplog), timeout=10)  # this process and the worker read them
    wait_until(
        lambda: "notification ignored" in worker_processes.log(proc), timeout=10
    )  # ...and it
    for _ in range(3):
        started = time.monotonic()
        assert add.using(timeout=20).enqueue_and_wait(2, 3) == 5
        assert time.monotonic() - started < 5, "answered by polling, not by notification"
    started = time.monotonic()
    assert asyncio.run(async_add.using(timeout=20).aenqueue_and_wait(4, 5)) == 9
    assert time.monotonic() - started < 5
    assert not [r for r in caplog.records if "notifications degraded" in r.getMessage()]
    assert "Traceback" not in worker_processes.log(proc)
    assert "notifications degraded" not in worker_processes.log(proc)


# -- what is left in Redis -----------------------------------------------------------------


def _redis_and_prefix(settings: Any) -> tuple[Any, str]:
    import redis

    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    return redis.Redis.from_url(config["hosts"][0]["address"]), config["prefix"]


def _group_keys(client: Any, prefix: str, job_ids: list[str]) -> list[str]:
    keys = [f"{prefix}:group:{group_for(job_id)}" for job_id in job_ids]
    return [key for key in keys if client.exists(key)]


@requires_redis
@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_many_waits_leave_no_group_in_redis(worker_processes, settings):
    client, prefix = _redis_and_prefix(settings)
    before = len(list(client.scan_iter(match=f"{prefix}*djq.done.*", count=1000)))
    worker_processes.start("--concurrency", "4")
    job_ids = [f"many-{i % 30}" for i in range(90)]  # three waiters per job, some at once
    errors: list[BaseException] = []

    def wait(ids: list[str]) -> None:
        try:
            for job_id in ids:
                add.using(job_id=job_id, timeout=20).enqueue_and_wait(1, 2)
            with pytest.raises(JobTimeoutError):  # a job for later: a timed-out wait
                add.using(
                    job_id=f"{ids[0]}-late", run_after=timedelta(hours=1), timeout=0.2
                ).enqueue_and_wait(1, 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=wait, args=(job_ids[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    used = sorted(set(job_ids)) + [f"{job_ids[i]}-late" for i in range(6)]
    wait_until(lambda: not _group_keys(client, prefix, used), timeout=5)
    after = len(list(client.scan_iter(match=f"{prefix}*djq.done.*", count=1000)))
    assert after <= before
    client.close()


@requires_redis
def test_groups_are_left_while_degraded(settings, monkeypatch):
    """A failure (here one send) degrades the hub for a few seconds; waiters that leave
    meanwhile used to skip their group_discard, leaving their groups in Redis for a day."""
    client, prefix = _redis_and_prefix(settings)
    notifier = hub()
    layer = notifier.layer
    job_ids = [f"degraded-{i}" for i in range(10)]
    waiters = {job_id: ThreadWaiter() for job_id in job_ids}
    for job_id, waiter in waiters.items():
        assert notifier.start_subscribe(job_id, waiter).confirm()
    assert len(_group_keys(client, prefix, job_ids)) == 10

    async def unreachable(group: str, message: dict[str, Any]) -> None:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(layer, "group_send", unreachable)
    notifier.job_finished(["something"])
    wait_until(lambda: not notifier.available)
    for job_id, waiter in waiters.items():
        notifier.unsubscribe(job_id, waiter)
    wait_until(lambda: not _group_keys(client, prefix, job_ids), timeout=5)
    client.close()


@requires_redis
def test_a_join_that_timed_out_but_landed_is_left(settings, monkeypatch):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "NOTIFY_TIMEOUT": 0.1}
    client, prefix = _redis_and_prefix(settings)
    notifier = hub()
    layer = notifier.layer
    original = layer.group_add

    async def slow_answer(group: str, channel: str) -> None:
        await original(group, channel)  # done on the server...
        await asyncio.sleep(1)  # ...answered after NOTIFY_TIMEOUT

    monkeypatch.setattr(layer, "group_add", slow_answer)
    waiter = ThreadWaiter()
    assert not notifier.start_subscribe("timed-out-join", waiter).confirm()
    assert _group_keys(client, prefix, ["timed-out-join"])
    notifier.unsubscribe("timed-out-join", waiter)
    wait_until(lambda: not _group_keys(client, prefix, ["timed-out-join"]), timeout=5)
    client.close()


@requires_redis
def test_a_leave_that_failed_is_retried_when_redis_answers_again(settings, monkeypatch):
    monkeypatch.setattr(link_module, "DEGRADED_RETRY", 0.2)
    client, prefix = _redis_and_prefix(settings)
    notifier = hub()
    layer = notifier.layer
    original = layer.group_discard
    failed: list[str] = []

    async def fails_once(group: str, channel: str) -> None:
        if not failed:
            failed.append(group)
            raise ConnectionError("Redis went away")
        await original(group, channel)

    monkeypatch.setattr(layer, "group_discard", fails_once)
    waiter = ThreadWaiter()
    assert notifier.start_subscribe("left-later", waiter).confirm()
    notifier.unsubscribe("left-later", waiter)
    wait_until(lambda: failed)
    assert _group_keys(client, prefix, ["left-later"])
    wait_until(lambda: notifier.available)
    other = ThreadWaiter()
    assert notifier.start_subscribe("another", other).confirm()  # answered: recovered
    wait_until(lambda: not _group_keys(client, prefix, ["left-later"]), timeout=5)
    notifier.unsubscribe("another", other)
    wait_until(lambda: not _group_keys(client, prefix, ["another"]), timeout=5)
    client.close()


@requires_redis
def test_closing_the_hub_leaves_the_groups_of_its_waiters(settings):
    """override_settings (or reset_hub) while waiters are subscribed: the closed hub's
    channel is gone, so are its groups."""
    client, prefix = _redis_and_prefix(settings)
    notifier = hub()
    job_ids = [f"closing-{i}" for i in range(5)]
    waiters = [ThreadWaiter() for _ in job_ids]
    for job_id, waiter in zip(job_ids, waiters, strict=True):
        assert notifier.start_subscribe(job_id, waiter).confirm()
    assert len(_group_keys(client, prefix, job_ids)) == 5
    reset_hub()
    assert _group_keys(client, prefix, job_ids) == []
    for job_id, waiter in zip(job_ids, waiters, strict=True):
        notifier.unsubscribe(job_id, waiter)  # on a closed hub: nothing happens
    client.close()


def test_a_worker_of_many_queues_holds_a_bounded_number_of_receives(in_memory, caplog):
    """Each receive holds a connection to the layer (hundreds of queues exhausted Redis's):
    past MAX_LISTENED_QUEUES the other queues are polled, and the worker says so once."""
    from django_jobqueue.notifications.wakeups import MAX_LISTENED_QUEUES

    notifier = hub()
    queues = [f"q{n:03d}" for n in range(MAX_LISTENED_QUEUES + 40)]
    woken: list[int] = []
    idle = IdleFlag()
    idle.set(True)
    notifier.listen_for_work(lambda: queues, lambda: woken.append(1), idle)
    wait_until(lambda: "finds work in the others by polling" in caplog.text)

    async def receiving() -> int:
        tasks = asyncio.all_tasks()
        return sum(1 for task in tasks if task.get_name().startswith("djq-loop-listen-"))

    wait_until(lambda: notifier.submit(lambda _: receiving()).result(5) == MAX_LISTENED_QUEUES)
    channel = work_channel(queues[0])
    notifier.submit(lambda layer: layer.send(channel, {"type": WORK_TYPE})).result(5)
    wait_until(lambda: woken == [1])
    assert caplog.text.count("finds work in the others by polling") == 1
