"""Waking workers: "work available" sent by producers (coalesced), received by idle workers.

Producers ``send`` to the plain channel ``djq.work.<queue>`` on commit. On a queue-like layer
(``RedisChannelLayer``) a plain channel is popped by exactly one receiver, so one new job
wakes one idle worker; on a broadcast layer (``RedisPubSubChannelLayer``) every idle worker of
the queue gets it and they race for the job with ``SKIP LOCKED``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from .link import DEGRADED_RETRY, Link, broadcasts, keep_running
from .log import logger
from .names import is_work, work_channel, work_message

#: Seconds between two wake-ups of one queue sent by one process (later ones are merged).
WAKE_SPACING = 0.002
#: Queues one worker receives wake-ups for (each receive holds a connection to the layer).
MAX_LISTENED_QUEUES = 32


class IdleFlag:
    """A flag the worker's thread sets and clears and the hub's loop can await."""

    def __init__(self) -> None:
        self._set = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.call_soon_threadsafe(self._made)

    def _made(self) -> asyncio.Event:
        """The event, made on the loop (first use there): set or clear as the flag is."""
        if self._event is None:
            self._event = asyncio.Event()
            if self._set:
                self._event.set()
        return self._event

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
        await self._made().wait()


class Wakeups:
    """Sends and receives "work available" over a :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._wake_lock = threading.Lock()
        self._waking: set[str] = set()  # queues with a wake-up in flight
        self._wake_again: set[str] = set()  # ... and another one asked for meanwhile
        self._tasks: set[asyncio.Future[Any]] = set()
        self._said_too_many = False

    def wake_workers(self, queues: Iterable[str]) -> None:
        """Wake one idle worker of each of ``queues``.

        Coalesced: while a wake-up of a queue is in flight, further calls only ask for one
        more after it, decided here under a lock, so a producer enqueueing one job after
        another neither wakes the hub's loop nor sends to the layer for each of them.
        """
        loop = self._link.loop
        if loop is None or not self._link.available:
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
            loop.call_soon_threadsafe(self._start_wakes, start)

    def _start_wakes(self, queues: list[str]) -> None:
        for queue in queues:
            task = asyncio.ensure_future(self._wake(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _wake(self, queue: str) -> None:
        layer = self._link.layer
        again = True
        try:
            while again:
                sent = time.monotonic()
                await self._link.call(
                    "send", lambda: layer.send(work_channel(queue), work_message())
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
        loop = self._link.loop
        if loop is None:
            return
        idle.bind(loop)
        loop.call_soon_threadsafe(
            lambda: loop.create_task(self._listen(queues, on_work, idle), name="djq-loop-listen")
        )

    async def _listen(
        self, queues: Callable[[], Iterable[str]], on_work: Callable[[], None], idle: IdleFlag
    ) -> None:
        listening: dict[str, asyncio.Task[None]] = {}
        while True:
            try:
                self._listen_to(queues, listening, on_work, idle)
            except Exception:  # keep listening whatever went wrong
                logger.exception("listening for work failed; trying again")
            await asyncio.sleep(1.0)

    def _listen_to(
        self,
        queues: Callable[[], Iterable[str]],
        listening: dict[str, asyncio.Task[None]],
        on_work: Callable[[], None],
        idle: IdleFlag,
    ) -> None:
        """Start a receiver for each queue not listened to yet (queues can be learned), for
        at most :data:`MAX_LISTENED_QUEUES` queues: each receive holds a connection to the
        layer, so a worker serving hundreds of queues would exhaust Redis's connections.
        The queues past the bound are found by polling (``POLL_INTERVAL``)."""
        wanted = list(queues())
        if len(wanted) > MAX_LISTENED_QUEUES and not self._said_too_many:
            self._said_too_many = True
            logger.warning(
                "this worker serves %d queues: it receives wake-ups for %d of them and finds "
                "work in the others by polling every POLL_INTERVAL (each receive holds a "
                "connection to the channel layer)",
                len(wanted),
                MAX_LISTENED_QUEUES,
            )
        for queue in wanted:
            if queue not in listening and len(listening) >= MAX_LISTENED_QUEUES:
                continue
            task = listening.get(queue)
            if task is None or task.done():
                body = partial(self._listen_one, work_channel(queue), on_work, idle)
                listening[queue] = asyncio.get_running_loop().create_task(
                    keep_running(f"the work receive loop of queue {queue!r}", body),
                    name=f"djq-loop-listen-{queue}",
                )

    async def _listen_one(self, channel: str, on_work: Callable[[], None], idle: IdleFlag) -> None:
        link = self._link
        broadcast = broadcasts(link.layer)
        while True:
            # A queue-like layer: receive only while idle, so a busy worker leaves the message
            # to an idle one. A broadcast layer gives every listener its own copy, and queues
            # what arrives for a subscribed channel: keep receiving (nothing piles up) and pass
            # each on; a busy worker keeps it as a hint for when a slot frees.
            if not broadcast:
                await idle.wait()
            if link.degraded_now():
                await asyncio.sleep(DEGRADED_RETRY)
                continue
            received, message = await link.receive(channel, "work-available", 0.0)
            if not received:
                continue
            link.recovered()
            if is_work(message):
                on_work()
            else:
                link.ignore("work-available", message)
