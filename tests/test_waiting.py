"""Request/response over the queue against real worker processes (and real Redis if given)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
from django.db import close_old_connections, connection
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import JobFailedError, JobTimeoutError, get_job
from django_jobqueue.models import Job
from django_jobqueue.notifications import (
    IdleFlag,
    ThreadWaiter,
    group_for,
    hub,
    reset_hub,
    work_channel,
)
from tests.conftest import POSTGRES, free_port, requires_redis, run_concurrently, wait_until
from tests.testapp.jobs import add, always_fails, async_add, record, sleep_then_record
from tests.testapp.models import Execution

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def test_enqueue_and_wait_returns_the_value(worker_processes):
    worker_processes.start()
    assert add.using(timeout=20).enqueue_and_wait(2, 3) == 5
    assert async_add.using(timeout=20).enqueue_and_wait(4, 5) == 9


def test_timeout_stops_the_wait_not_the_job(worker_processes):
    worker_processes.start()
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as info:
        sleep_then_record.using(job_id="slow", timeout=0.5).enqueue_and_wait("slow", 1.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError)
    assert (info.value.job_id, info.value.timeout) == ("slow", 0.5)
    wait_until(lambda: get_job("slow").status == "completed", timeout=30)
    assert Execution.objects.filter(tag="slow").count() == 1


def test_failure_is_raised_after_the_last_attempt(worker_processes):
    worker_processes.start()
    with pytest.raises(JobFailedError) as info:
        always_fails.using(job_id="poison", timeout=30).enqueue_and_wait("bad input")
    assert info.value.error == "RuntimeError: bad input"
    assert get_job("poison").attempts == 3


def test_handle_wait_blocks_for_an_enqueued_job(worker_processes):
    handle = add.enqueue(20, 22)
    worker_processes.start()
    assert handle.wait(timeout=20) == 42
    assert handle.status == "completed"


def test_concurrent_waiters_share_one_run(worker_processes):
    def wait() -> object:
        return record.using(job_id="shared", timeout=30).enqueue_and_wait("shared", sleep=0.5)

    worker_processes.start("--concurrency", "4")  # it takes a second to start: they all wait
    results = run_concurrently(*[wait] * 4, timeout=40)
    assert results == ["shared"] * 4
    assert Execution.objects.filter(tag="shared").count() == 1


def test_cached_result_and_cached_failure_answer_at_once(run_worker):
    add.using(job_id="cached").enqueue(1, 2)
    always_fails.using(job_id="cached-failure", max_attempts=1).enqueue()
    run_worker()
    started = time.monotonic()
    assert add.using(job_id="cached").enqueue_and_wait(1, 2) == 3
    with pytest.raises(JobFailedError, match="boom"):
        always_fails.using(job_id="cached-failure").enqueue_and_wait()
    assert time.monotonic() - started < 1.0
    assert Job.objects.count() == 2


@pytest.mark.parametrize("where", ["closed port", "silent server"])
def test_no_redis_still_answers_by_polling(worker_processes, settings, caplog, where):
    """The web side's Redis is unreachable (a closed port) or accepts connections and never
    answers: enqueue_and_wait still answers, every layer call is bounded, one warning."""
    silent = _SilentServer() if where == "silent server" else None
    port = silent.port if silent else free_port()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]},
        }
    }
    settings.JOBQUEUE = {**settings.JOBQUEUE, "NOTIFY_TIMEOUT": 0.2}
    reset_hub()
    worker_processes.start()
    try:
        started = time.monotonic()
        assert add.using(timeout=20).enqueue_and_wait(1, 1) == 2
        assert add.using(timeout=20).enqueue_and_wait(2, 2) == 4
        assert add.enqueue(3, 3).status == "queued"
        assert time.monotonic() - started < 10
    finally:
        reset_hub()
        if silent:
            silent.close()
    degraded = [r for r in caplog.records if "notifications degraded" in r.getMessage()]
    assert len(degraded) == 1


@requires_redis
@pytest.mark.parametrize("alias", ["default", "pubsub"])
def test_notifications_make_waiting_fast_with_slow_polling(worker_processes, settings, alias):
    """Polling every 30 s on both sides: only the notifications can answer quickly, on the
    queue-like RedisChannelLayer and on the broadcast RedisPubSubChannelLayer alike."""
    overrides = {"POLL_INTERVAL": 30, "CHANNEL_LAYER": alias}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    first = _first_poll_job()
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    _wait_past_the_first_poll([first], settings, alias)  # from here on only a wake-up helps
    started = time.monotonic()
    for value in range(5):
        assert add.using(timeout=10).enqueue_and_wait(value, 1) == value + 1
    assert time.monotonic() - started < 5


def _first_poll_job(queue: str = "default") -> Job:
    """A job written straight to the table, before its worker starts: no wake-up announces
    it, so the worker's first poll is what runs it."""
    return baker.make_recipe("tests.queued_job", queue=queue)


def _wait_past_the_first_poll(firsts: list[Job], settings, alias: str) -> None:
    """Wait until the workers' first polls ran ``firsts`` and, on the broadcast layer (which
    keeps nothing for a channel nobody listens on), a worker is subscribed to the default
    queue's work channel: from then on a new job starts quickly only if a wake-up helps."""
    ids = [first.pk for first in firsts]
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, status="completed").count() == len(ids), timeout=20
    )
    if alias != "pubsub":
        return  # the queue-like layer keeps a message until a worker receives it
    import redis

    client = redis.Redis.from_url(settings.CHANNEL_LAYERS[alias]["CONFIG"]["hosts"][0]["address"])
    try:
        channel = work_channel("default")
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] >= 1, timeout=10)
    finally:
        client.close()


@requires_redis
def test_one_new_job_wakes_one_idle_worker(worker_processes, settings):
    env = {"DJQ_JOBQUEUE": '{"POLL_INTERVAL": 30}'}
    # Each worker serves a queue of its own too, for the job its first poll runs.
    firsts = [_first_poll_job(f"first-poll-{index}") for index in range(3)]
    procs = [
        worker_processes.start("--queue", "default", "--queue", first.queue, env=env)
        for first in firsts
    ]
    for proc in procs:
        wait_until(lambda p=proc: "worker started" in worker_processes.log(p), timeout=20)
    _wait_past_the_first_poll(firsts, settings, "default")
    handle = add.enqueue(1, 2)
    wait_until(lambda: handle.refresh().status == "completed", timeout=10)
    # A measuring window, not a synchronisation: time for a second worker to be woken too.
    time.sleep(0.3)
    woken = sum("woken by a work-available" in worker_processes.log(p) for p in procs)
    assert woken == 1


@requires_redis
def test_a_join_answered_after_the_insert_does_not_miss_the_result(worker_processes, settings):
    """The join of the job's group overlaps the INSERT. Here the hub's loop stalls, so the
    join is answered long after the INSERT and after the worker (polling every 50 ms) has
    run the job and announced it to nobody: the waiter reads the job once more after the
    join instead of sleeping through its 30 s POLL_INTERVAL."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 30}
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": '{"POLL_INTERVAL": 0.05}'})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    assert add.using(timeout=10).enqueue_and_wait(0, 0) == 0  # the hub and its channel exist
    notifier = hub()
    assert not notifier.closed
    finished = threading.Event()

    async def stall(layer: object) -> None:  # the loop is busy: the join waits its turn
        finished.wait(timeout=5)

    notifier.submit(stall)

    def watch() -> None:
        try:
            wait_until(lambda: Job.objects.filter(status="completed").count() == 2, timeout=10)
        finally:
            finished.set()
            close_old_connections()
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        assert add.using(timeout=10).enqueue_and_wait(2, 3) == 5
    finally:
        finished.set()
        watcher.join()
    assert time.monotonic() - started < 8


@requires_redis
def test_lateness_of_the_join_is_judged_when_the_job_is_written(worker_processes, settings):
    """A join answered after the INSERT committed, but before a slow job_enqueued receiver
    returned, is still late: the worker may have announced the job in between."""
    from django_jobqueue import signals

    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 30}
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": '{"POLL_INTERVAL": 0.05}'})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    assert add.using(timeout=10).enqueue_and_wait(0, 0) == 0
    notifier = hub()
    assert not notifier.closed
    release = threading.Event()

    async def stall(layer: object) -> None:  # the loop stalls
        release.wait(timeout=5)

    notifier.submit(stall)

    def slow_receiver(sender, handle, **kwargs):  # an audit write, a metrics call...
        wait_until(lambda: Job.objects.filter(status="completed").count() == 2, timeout=10)
        release.set()  # the join goes out now: after the worker's "finished"
        other = ThreadWaiter()  # shares the waiter's join: confirmed once it is answered
        assert notifier.start_subscribe(handle.id, other).confirm()
        notifier.unsubscribe(handle.id, other)

    signals.job_enqueued.connect(slow_receiver)
    started = time.monotonic()
    try:
        assert add.using(timeout=10).enqueue_and_wait(2, 3) == 5
    finally:
        signals.job_enqueued.disconnect(slow_receiver)
        release.set()
    assert time.monotonic() - started < 8


@requires_redis
def test_a_busy_worker_keeps_consuming_broadcast_wake_ups(settings):
    """On a broadcast layer a worker stays subscribed while busy; what arrives then is
    received as it comes (and kept as a hint), never left to pile up in the layer."""
    import redis
    from channels_redis.pubsub import RedisPubSubChannelLayer

    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "pubsub"}
    config = settings.CHANNEL_LAYERS["pubsub"]["CONFIG"]
    client = redis.Redis.from_url(config["hosts"][0]["address"])
    channel = work_channel("busy-test")
    message = RedisPubSubChannelLayer(**config).serialize({"type": "jobqueue.work"})
    woken: list[int] = []
    idle = IdleFlag()
    idle.set(True)
    hub().listen_for_work(lambda: ["busy-test"], lambda: woken.append(1), idle)
    try:
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] >= 1, timeout=10)
        client.publish(channel, message)
        wait_until(lambda: len(woken) == 1)
        idle.set(False)
        for _ in range(50):
            client.publish(channel, message)
        wait_until(lambda: len(woken) == 51)
    finally:
        client.close()


@requires_redis
@pytest.mark.parametrize("alias", ["default", "pubsub"])
def test_a_job_enqueued_while_the_worker_is_busy_starts_when_its_slot_frees(
    worker_processes, settings, alias, tmp_path
):
    """Polling every 20 s: the wake-up that came while the only slot was busy must start the
    job as soon as the slot frees (a broadcast layer delivers it to the busy worker)."""
    overrides = {"POLL_INTERVAL": 20, "CHANNEL_LAYER": alias}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    proc = worker_processes.start("--concurrency", "1", env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    assert add.using(timeout=10).enqueue_and_wait(1, 1) == 2  # a short job: prefetch > 0
    marker = tmp_path / "started"
    sleep_then_record.enqueue("busy", 1.0, str(marker))
    wait_until(marker.exists, timeout=10)
    started = time.monotonic()
    assert add.enqueue(2, 3).wait(timeout=15) == 5
    assert time.monotonic() - started < 5


@requires_redis
def test_a_waiter_that_times_out_leaves_nothing_in_redis(settings):
    import redis

    client = redis.Redis.from_url(
        settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"]
    )
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    with pytest.raises(JobTimeoutError):
        add.using(job_id="nobody-runs-me", timeout=0.3).enqueue_and_wait(1, 1)
    group_key = f"{prefix}:group:{group_for('nobody-runs-me')}"
    wait_until(lambda: not client.exists(group_key), timeout=5)
    client.close()


async def test_async_view_through_the_asgi_handler(worker_processes):
    from django.test import AsyncClient

    await asyncio.to_thread(worker_processes.start)
    response = await AsyncClient().get("/add/40/2")
    assert response.status_code == 200
    assert response.json() == {"result": 42}


async def test_async_timeout_through_the_asgi_handler():
    from django.test import AsyncClient

    response = await AsyncClient().get("/add/1/1?timeout=0.2")
    assert response.status_code == 504
    assert "did not finish within 0.2 seconds" in response.json()["error"]


@pytest.mark.skipif(not POSTGRES, reason="counts PostgreSQL connections")
async def test_hundreds_of_async_waiters_share_a_few_connections(worker_processes):
    await asyncio.to_thread(worker_processes.start, "--concurrency", "4")

    def connections_now() -> int:
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                )
                return cursor.fetchone()[0]
        finally:
            connection.close()  # this runs in a throwaway executor thread

    waiters = [add.using(timeout=60).aenqueue_and_wait(i, i) for i in range(300)]
    gathered = asyncio.gather(*waiters)
    peak = 0
    while not gathered.done():
        peak = max(peak, await asyncio.to_thread(connections_now))
        await asyncio.sleep(0.05)  # a sampling interval, not a synchronisation
    assert await gathered == [2 * i for i in range(300)]
    assert peak <= 12, f"{peak} connections for 300 waiters"


class _SilentServer:
    """Accepts TCP connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)

    def close(self) -> None:
        self.sock.close()
        for client in self.clients:
            client.close()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs the redis-server binary")
@pytest.mark.parametrize("alias", ["default", "pubsub"])
def test_redis_dying_mid_run_degrades_to_polling(
    worker_processes, settings, caplog, tmp_path, alias
):
    """A private Redis serves both sides, then is killed: answers keep coming, by polling."""
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _answers(port), timeout=10)
        backend = {
            "default": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[alias]
        settings.CHANNEL_LAYERS = {
            alias: {"BACKEND": backend, "CONFIG": {"hosts": [url], "prefix": "djq-mid-run"}}
        }
        settings.JOBQUEUE = {**settings.JOBQUEUE, "NOTIFY_TIMEOUT": 0.2, "CHANNEL_LAYER": alias}
        reset_hub()
        proc = worker_processes.start(
            env={
                "REDIS_URL": url,
                "DJQ_REDIS_PREFIX": "djq-mid-run",
                "DJQ_JOBQUEUE": json.dumps({"CHANNEL_LAYER": alias}),
            }
        )
        assert add.using(timeout=20).enqueue_and_wait(1, 1) == 2
        server.kill()
        server.wait(10)
        for value in range(3):
            assert add.using(timeout=20).enqueue_and_wait(value, 10) == value + 10
        assert proc.poll() is None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        reset_hub()
    degraded = [r for r in caplog.records if "notifications degraded" in r.getMessage()]
    assert len(degraded) == 1
    assert "notifications degraded" in worker_processes.log(proc)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- polling only ----------------------------------------------------------------------------


def test_without_notifications_an_answer_takes_about_one_poll_interval(worker_processes, settings):
    """No channel layer: the worker finds the job within POLL_INTERVAL and the waiter, who
    looks four times as often, sees its result within a quarter of one more (it used to take
    up to two intervals)."""
    overrides = {"POLL_INTERVAL": 2.0, "CHANNEL_LAYER": None}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **overrides}
    reset_hub()
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: "worker started" in worker_processes.log(proc), timeout=20)
    lags = []
    for i in range(5):
        handle = add.enqueue(i, 1)
        assert handle.wait(timeout=20) == i + 1
        returned = timezone.now()
        finished = Job.objects.get(job_id=handle.id).finished_at
        lags.append((returned - finished).total_seconds())
    assert max(lags) < 1.0, lags  # a quarter of the 2 s interval, plus the read


def test_a_timeout_says_when_no_worker_took_the_job(transactional_db):
    with pytest.raises(JobTimeoutError) as info:
        add.using(timeout=0.3, queue="nobody-serves-this").enqueue_and_wait(1, 2)
    message = str(info.value)
    assert "still queued and no worker has started it" in message
    assert "runjobworker" in message and "'nobody-serves-this'" in message
    assert info.value.status == "queued"
