"""Notifications over the channel layer: hints that make waiting and waking fast.

One process-wide :class:`Hub` owns a background thread with a long-lived event loop (the
channel layer's connections are per event loop, so ``async_to_sync`` per call would pay a new
connection each time). It multiplexes every waiter of the process over one channel:

* "finished": a worker ``group_send``s to the job's group (a hash of the job id, so any id
  works); waiters ``group_add`` the process channel to that group *before* the job is written.
* "work available": producers ``send`` to the plain channel ``djq.work.<queue>`` on commit.
  On a queue-like layer (``RedisChannelLayer``) a plain channel is popped by exactly one
  receiver, so one new job wakes one idle worker; on a broadcast layer
  (``RedisPubSubChannelLayer``: one Redis command per message, the lowest latency) every idle
  worker of the queue gets it and they race for the job with ``SKIP LOCKED``.

The database stays the truth. Every layer call is bounded by ``NOTIFY_TIMEOUT``; a failure
logs one warning, switches the hub to "degraded" for a few seconds (calls are skipped, callers
poll the database) and it tries again after that.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any

from . import conf

logger = logging.getLogger("django_jobqueue")

FINISHED_TYPE = "jobqueue.finished"
WORK_TYPE = "jobqueue.work"
DEGRADED_RETRY = 5.0
#: Seconds between two wake-ups of one queue sent by one process (later ones are merged).
WAKE_SPACING = 0.002


def group_for(job_id: str) -> str:
    """The channel-layer group of a job's waiters: valid whatever the id's characters."""
    return "djq.done." + hashlib.blake2b(job_id.encode(), digest_size=16).hexdigest()


def work_channel(queue: str) -> str:
    """The plain channel idle workers of ``queue`` receive "work available" on."""
    if len(queue) <= 80:
        return f"djq.work.{queue}"
    return "djq.work." + hashlib.blake2b(queue.encode(), digest_size=16).hexdigest()


class Waiter:
    """Something waiting for one job; ``notify()`` is called from the hub's thread."""

    def notify(self) -> None:
        raise NotImplementedError


class ThreadWaiter(Waiter):
    def __init__(self) -> None:
        self.event = threading.Event()

    def notify(self) -> None:
        self.event.set()


class AsyncWaiter(Waiter):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop closed: nobody listens
            self.loop.call_soon_threadsafe(self.event.set)


class Hub:
    """The process's link to the channel layer. Use :func:`hub` to get it."""

    def __init__(self, alias: str | None) -> None:
        self.alias = alias
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._joins: dict[str, Future[Any]] = {}  # job id -> its group join (local waiters)
        self._degraded_until = 0.0
        self._degraded = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._layer: Any = None
        self._channel: str | None = None
        self._channel_lock: asyncio.Lock | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._wake_lock = threading.Lock()
        self._waking: set[str] = set()  # queues with a wake-up in flight
        self._wake_again: set[str] = set()  # ... and another one asked for meanwhile
        self._tasks: set[asyncio.Future[Any]] = set()
        if alias is not None:
            self._layer = self._make_layer(alias)
        if self._layer is not None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=run_loop,
                args=(self._loop,),
                name="django-jobqueue-notifications",
                daemon=True,
            )
            self._thread.start()

    @staticmethod
    def _make_layer(alias: str) -> Any:
        from channels.layers import channel_layers

        try:
            # A private instance: its connections live on the hub's loop alone, and closing
            # them (tests, reset) cannot disturb the project's own consumers.
            return channel_layers.make_backend(alias)
        except Exception as exc:
            logger.warning(
                "notifications off: channel layer %r could not be made (%s); waiters and "
                "workers poll the database",
                alias,
                exc,
            )
            return None

    @property
    def enabled(self) -> bool:
        """True when a channel layer is configured (it may still be degraded)."""
        return self._layer is not None

    @property
    def available(self) -> bool:
        """True when notifications can be relied on right now (configured, not degraded)."""
        return self._layer is not None and time.monotonic() >= self._degraded_until

    # -- running coroutines on the hub's loop --------------------------------------------

    def _submit(self, coro: Awaitable[Any]) -> Future[Any] | None:
        if self._loop is None:
            if asyncio.iscoroutine(coro):
                coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    def _fire(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on the hub's loop without waiting for it; log if it fails."""
        future = self._submit(coro)
        if future is not None:
            future.add_done_callback(_log_failure)

    async def _call(self, what: str, make: Callable[[], Awaitable[Any]]) -> bool:
        """Run one layer call, bounded in time; False (and degraded) if it failed."""
        if time.monotonic() < self._degraded_until:
            return False
        try:
            async with asyncio.timeout(conf.get("NOTIFY_TIMEOUT")):  # no task per call
                await make()
        except Exception as exc:
            if _is_channel_full(exc):
                logger.debug("notification dropped: %s channel is full", what)
                return True
            self._degrade(what, exc)
            return False
        self._recovered()
        return True

    def _degrade(self, what: str, exc: BaseException) -> None:
        self._degraded_until = time.monotonic() + DEGRADED_RETRY
        if not self._degraded:
            self._degraded = True
            logger.warning(
                "notifications degraded: %s on channel layer %r failed (%s: %s); falling back "
                "to polling the database every POLL_INTERVAL, retrying in %gs",
                what,
                self.alias,
                type(exc).__name__,
                exc,
                DEGRADED_RETRY,
            )

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("notifications restored: channel layer %r answers again", self.alias)

    # -- waiters ---------------------------------------------------------------------------

    def start_subscribe(self, job_id: str, waiter: Waiter) -> Subscription:
        """Register ``waiter`` for ``job_id`` and start joining the job's group, without
        waiting: the caller can write the job meanwhile and confirm the subscription after.
        Later local waiters of the same job share the first one's join."""
        with self._lock:
            waiters = self._waiters.setdefault(job_id, set())
            waiters.add(waiter)
            join = self._joins.get(job_id)
            if join is not None and join.cancelled():  # the hub closed under it: join again
                join = None
            if join is None:
                join = self._submit(self._join(job_id))
                if join is not None:
                    self._joins[job_id] = join
        return Subscription(join, self)

    def unsubscribe(self, job_id: str, waiter: Waiter) -> None:
        """Forget ``waiter``; the last local waiter of a job leaves the job's group."""
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is None:
                return
            waiters.discard(waiter)
            if waiters:
                return
            del self._waiters[job_id]
            join = self._joins.pop(job_id, None)
        self._fire(self._leave(job_id, join))

    async def _join(self, job_id: str) -> bool:
        channel = await self._process_channel()
        if channel is None:
            return False
        return await self._call(
            "group_add", lambda: self._layer.group_add(group_for(job_id), channel)
        )

    async def _leave(self, job_id: str, join: Future[Any] | None) -> None:
        if join is not None:  # leave after the join, not before it (it may still be running)
            await asyncio.wait([asyncio.wrap_future(join)])  # never raises
        if self._channel is None:
            return
        with self._lock:
            if job_id in self._waiters:  # a new waiter came meanwhile and relies on the group
                return
        await self._call(
            "group_discard", lambda: self._layer.group_discard(group_for(job_id), self._channel)
        )

    async def _process_channel(self) -> str | None:
        if self._channel is not None:
            return self._channel
        if self._channel_lock is None:
            self._channel_lock = asyncio.Lock()
        async with self._channel_lock:  # concurrent first joins share one channel
            return await self._make_process_channel()

    async def _make_process_channel(self) -> str | None:
        if self._channel is None:
            try:
                channel: str = await asyncio.wait_for(
                    self._layer.new_channel(), timeout=conf.get("NOTIFY_TIMEOUT")
                )
            except Exception as exc:
                self._degrade("new_channel", exc)
                return None
            self._channel = channel
            self._receiver = asyncio.get_running_loop().create_task(
                self._receive_loop(channel), name="djq-loop-receive"
            )
        return self._channel

    async def _receive_loop(self, channel: str) -> None:
        while True:
            try:
                message = await self._layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_read_timeout(exc):
                    continue
                self._degrade("receive", exc)
                await asyncio.sleep(min(DEGRADED_RETRY, conf.get("POLL_INTERVAL")))
                continue
            if message.get("type") == FINISHED_TYPE:
                self._deliver(str(message.get("job_id")))

    def _deliver(self, job_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(job_id, ()))
        for waiter in waiters:
            try:
                waiter.notify()
            except Exception:  # one broken waiter must not stop the others' notifications
                logger.exception("notifying a waiter of job %s failed", job_id)

    # -- workers and producers -------------------------------------------------------------

    def job_finished(self, job_ids: Iterable[str]) -> None:
        """Tell the waiters of ``job_ids`` (in any process) that the jobs finished."""
        if self._loop is not None and self.available:
            self._fire(self._send_finished(list(job_ids)))

    async def _send_finished(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            if not await self._call("group_send", partial(self._group_send_finished, job_id)):
                return

    def _group_send_finished(self, job_id: str) -> Awaitable[None]:
        message = {"type": FINISHED_TYPE, "job_id": job_id}
        return self._layer.group_send(group_for(job_id), message)  # type: ignore[no-any-return]

    def wake_workers(self, queues: Iterable[str]) -> None:
        """Wake one idle worker of each of ``queues``.

        Coalesced: while a wake-up of a queue is in flight, further calls only ask for one
        more after it, decided here under a lock, so a producer enqueueing one job after
        another neither wakes the hub's loop nor sends to the layer for each of them.
        """
        if self._loop is None or not self.available:
            return
        start: list[str] = []
        with self._wake_lock:
            for queue in queues:
                if queue in self._waking:
                    self._wake_again.add(queue)
                else:
                    self._waking.add(queue)
                    start.append(queue)
        if start:
            self._loop.call_soon_threadsafe(self._start_wakes, start)

    def _start_wakes(self, queues: list[str]) -> None:
        for queue in queues:
            task = asyncio.ensure_future(self._wake(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wake(self, queue: str) -> None:
        again = True
        try:
            while again:
                sent = time.monotonic()
                await self._call(
                    "send", lambda: self._layer.send(work_channel(queue), {"type": WORK_TYPE})
                )
                # Another wake-up asked for meanwhile goes out WAKE_SPACING after this one at
                # the earliest: the jobs committed by then share it (a woken worker claims
                # every free slot's worth), and a producer enqueueing in a loop costs a send
                # per few jobs instead of one per job.
                await asyncio.sleep(max(0.0, sent + WAKE_SPACING - time.monotonic()))
                with self._wake_lock:
                    again = queue in self._wake_again
                    self._wake_again.discard(queue)
                    if not again:
                        self._waking.discard(queue)
        except BaseException:
            with self._wake_lock:
                self._waking.discard(queue)
                self._wake_again.discard(queue)
            raise

    def listen_for_work(
        self, queues: Callable[[], Iterable[str]], on_work: Callable[[], None], idle: IdleFlag
    ) -> None:
        """Call ``on_work()`` (from the hub's thread) when a "work available" message for one
        of ``queues()`` arrives; only receive while ``idle`` is set, so busy workers leave
        wake-ups to idle ones."""
        if self._loop is None:
            return
        idle.bind(self._loop)
        loop = self._loop
        loop.call_soon_threadsafe(
            lambda: loop.create_task(self._listen(queues, on_work, idle), name="djq-loop-listen")
        )

    async def _listen(
        self, queues: Callable[[], Iterable[str]], on_work: Callable[[], None], idle: IdleFlag
    ) -> None:
        listening: dict[str, asyncio.Task[None]] = {}
        while True:
            try:
                await self._listen_to(queues, listening, on_work, idle)
            except Exception:  # keep listening whatever went wrong
                logger.exception("listening for work failed; trying again")
            await asyncio.sleep(1.0)

    async def _listen_to(
        self,
        queues: Callable[[], Iterable[str]],
        listening: dict[str, asyncio.Task[None]],
        on_work: Callable[[], None],
        idle: IdleFlag,
    ) -> None:
        """Start a receiver for each queue not listened to yet (queues can be learned)."""
        for queue in queues():
            if queue not in listening:
                listening[queue] = asyncio.get_running_loop().create_task(
                    self._listen_one(work_channel(queue), on_work, idle),
                    name=f"djq-loop-listen-{queue}",
                )

    async def _listen_one(self, channel: str, on_work: Callable[[], None], idle: IdleFlag) -> None:
        broadcast = broadcasts(self._layer)
        while True:
            # A queue-like layer: receive only while idle, so a busy worker leaves the message
            # to an idle one. A broadcast layer gives every listener its own copy, and queues
            # what arrives for a subscribed channel: keep receiving (nothing piles up) and pass
            # each on; a busy worker keeps it as a hint for when a slot frees.
            if not broadcast:
                await idle.wait()
            if time.monotonic() < self._degraded_until:
                await asyncio.sleep(DEGRADED_RETRY)
                continue
            try:
                await self._layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not _is_read_timeout(exc):
                    self._degrade("receive", exc)
                continue
            self._recovered()
            on_work()

    async def _close_connections(self) -> None:
        """Close every connection of the layer, blocked receives included: a receive left
        open on the server would take (and lose) the next message sent to its channel."""
        per_loop = getattr(self._layer, "_layers", None)  # channels_redis: pools per loop
        if isinstance(per_loop, dict):
            for layer in list(per_loop.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(layer.flush(), timeout=1.0)
            return
        close = getattr(self._layer, "close_pools", None) or getattr(self._layer, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), timeout=1.0)

    def close(self) -> None:
        """Stop the hub's loop and close its connections (tests, settings changes)."""
        if self._loop is not None:
            loop = self._loop
            self._loop = None

            async def shutdown() -> None:
                try:
                    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                    # Let short tasks (a group_discard on its way out) finish; stop the loops.
                    short = [t for t in tasks if not t.get_name().startswith("djq-loop")]
                    if short:
                        await asyncio.wait(short, timeout=1.0)
                    for task in tasks:
                        task.cancel()
                    # Bounded: a task that ignores its cancellation must not keep the loop
                    # (and its blocked receives) alive; closing the connections ends them.
                    await asyncio.wait(tasks, timeout=1.0) if tasks else None
                    await self._close_connections()
                    # A receive blocked in the server ends once its connection is closed.
                    pending = [task for task in tasks if not task.done()]
                    await asyncio.wait(pending, timeout=1.0) if pending else None
                finally:
                    loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            if self._thread is not None:
                self._thread.join(timeout=6.0)


class Subscription:
    """A join of a job's group on its way (:meth:`Hub.start_subscribe`).

    Local waiters of one job share the join's future: nothing here cancels it (a waiter's
    own cancellation or timeout must not undo the join the others rely on)."""

    def __init__(self, future: Future[Any] | None, hub: Hub) -> None:
        self._future = future
        self._hub = hub
        self.late = True  # until mark_written() says otherwise

    def mark_written(self) -> None:
        """Call the moment the job is written: a join not answered by then (or never made)
        is late, and the waiter must read the job once after it (the job may have finished
        in between)."""
        future = self._future
        self.late = future is not None and (not future.done() or future.cancelled())

    def _outcome(self) -> bool:
        future = self._future
        assert future is not None
        if not future.done() or future.cancelled() or future.exception() is not None:
            return False
        return bool(future.result())

    def confirm(self) -> bool:
        """Wait for the join, at most ``NOTIFY_TIMEOUT``; True when notifications are live."""
        if self._future is None:
            return self._hub.available
        concurrent.futures.wait([self._future], timeout=conf.get("NOTIFY_TIMEOUT") + 0.5)
        return self._outcome()

    async def aconfirm(self) -> bool:
        """Async twin of :meth:`confirm`."""
        if self._future is None:
            return self._hub.available
        # asyncio.wait: neither its timeout nor our cancellation cancels the shared join.
        await asyncio.wait(
            [asyncio.wrap_future(self._future)], timeout=conf.get("NOTIFY_TIMEOUT") + 0.5
        )
        return self._outcome()


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class IdleFlag:
    """A flag the worker's thread sets and clears and the hub's loop can await."""

    def __init__(self) -> None:
        self._set = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

        def make() -> None:
            self._event = asyncio.Event()
            if self._set:
                self._event.set()

        loop.call_soon_threadsafe(make)

    def set(self, value: bool) -> None:
        if value == self._set:
            return
        self._set = value
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply)

    def _apply(self) -> None:
        if self._event is not None:
            if self._set:
                self._event.set()
            else:
                self._event.clear()

    async def wait(self) -> None:
        while self._event is None:
            await asyncio.sleep(0.01)
        await self._event.wait()


def broadcasts(layer: Any) -> bool:
    """True for a layer that gives every receiver of a channel its own copy of a message
    (``channels_redis.pubsub.RedisPubSubChannelLayer``); False for the queue-like layers, where
    one receiver pops each message (``RedisChannelLayer``, ``InMemoryChannelLayer``)."""
    return any(cls.__module__.startswith("channels_redis.pubsub") for cls in type(layer).__mro__)


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("notification task failed", exc_info=future.exception())


def _is_read_timeout(exc: BaseException) -> bool:
    """A blocking receive that outlived the client's socket timeout: redis-py 8 defaults
    ``socket_timeout`` to 5 s, the length of channels_redis's BZPOPMIN. Not an outage (sends
    are bounded and judged on their own); receive again."""
    return type(exc).__name__ == "TimeoutError" and "reading" in str(exc).lower()


def _is_channel_full(exc: BaseException) -> bool:
    from channels.exceptions import ChannelFull

    return isinstance(exc, ChannelFull)


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """The process's hub for the layer named by ``JOBQUEUE["CHANNEL_LAYER"]``."""
    global _hub
    alias = conf.get("CHANNEL_LAYER")
    current = _hub
    if current is not None and current.pid == os.getpid() and current.alias == alias:
        return current
    with _hub_lock:
        if _hub is None or _hub.pid != os.getpid() or _hub.alias != alias:
            if _hub is not None and _hub.pid == os.getpid():
                _hub.close()
            _hub = Hub(alias)
        return _hub


def reset_hub() -> None:
    """Close the hub; the next :func:`hub` call makes a new one (tests, settings changes)."""
    global _hub
    with _hub_lock:
        if _hub is not None and _hub.pid == os.getpid():
            _hub.close()
        _hub = None
