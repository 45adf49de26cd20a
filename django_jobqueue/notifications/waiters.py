"""Waiting for "finished": local waiters, the shared joins of job groups, the process channel.

Every waiter of the process is reached through one channel (the process channel). A job's
first local waiter joins the job's group; later ones share that join; the last one leaves.
Joins and leaves of one job run one after the other on the link's loop, and a group joined
but not left yet (a leave that failed or was cut short) is left again when the layer
answers again, and when the hub closes: no group outlives its waiters in the layer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from .. import conf
from ..base import JobState, Status
from .link import DEGRADED_RETRY, Link, keep_running, new_process_channel
from .log import logger
from .names import FINISHED_TYPE, completed_outcome, group_for, job_message


class Waiter:
    """Something waiting for one job; ``notify()`` ("finished") and ``progress()`` are called
    from the hub's thread (``notify(state)`` also from the safety-net poll's, with the job's
    final state read from the database)."""

    def notify(self, state: Any = None) -> None:
        raise NotImplementedError

    def progress(self) -> None:
        """The job reported progress (its new value is in the database); by default nothing:
        a waiter for the result only cares about "finished"."""


class ThreadWaiter(Waiter):
    """A waiting thread: ``event`` is set on "finished"; ``state`` holds the final state when
    the notifier knew it (None: read the job)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.state: Any = None

    def notify(self, state: Any = None) -> None:
        if state is not None:
            self.state = state
        self.event.set()


class AsyncWaiter(Waiter):
    """A waiting coroutine: ``event`` is set on its loop on "finished"; ``state`` as for
    :class:`ThreadWaiter`."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.state: Any = None

    def notify(self, state: Any = None) -> None:
        if state is not None:
            self.state = state
        with contextlib.suppress(RuntimeError):  # the waiter's loop closed: nobody listens
            self.loop.call_soon_threadsafe(self.event.set)


class Subscription:
    """A join of a job's group on its way (:meth:`Hub.start_subscribe`).

    Local waiters of one job share the join's future: nothing here cancels it (a waiter's
    own cancellation or timeout must not undo the join the others rely on)."""

    def __init__(self, future: Future[Any] | None, link: Link) -> None:
        self._future = future
        self._link = link
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
            return self._link.available
        concurrent.futures.wait([self._future], timeout=conf.settings.NOTIFY_TIMEOUT + 0.5)
        return self._outcome()

    async def aconfirm(self) -> bool:
        """Async twin of :meth:`confirm`."""
        if self._future is None:
            return self._link.available
        # asyncio.wait: neither its timeout nor our cancellation cancels the shared join.
        await asyncio.wait(
            [asyncio.wrap_future(self._future)], timeout=conf.settings.NOTIFY_TIMEOUT + 0.5
        )
        return self._outcome()


class KeyedLock:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Waiters:
    """The local waiters of each job, their groups' joins and the process channel."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._lock = threading.Lock()
        self.waiters: dict[str, set[Waiter]] = {}
        self.joins: dict[str, Future[Any]] = {}  # job id -> its group join (local waiters)
        # On the link's loop only:
        self._channel: str | None = None
        self._channel_lock: asyncio.Lock | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._serial = KeyedLock()  # the joins and leaves of one job, one after the other
        self._joined: set[str] = set()  # job ids whose group we may be in (left: removed)

    def start_subscribe(self, job_id: str, waiter: Waiter) -> Subscription:
        """Register ``waiter`` for ``job_id`` and start joining the job's group, without
        waiting: the caller can write the job meanwhile and confirm the subscription after.
        Later local waiters of the same job share the first one's join."""
        with self._lock:
            waiters = self.waiters.setdefault(job_id, set())
            waiters.add(waiter)
            join = self.joins.get(job_id)
            if join is not None and join.cancelled():  # the hub closed under it: join again
                join = None
            if join is None:
                join = self._link.submit(self._join(job_id))
                if join is not None:
                    self.joins[job_id] = join
        return Subscription(join, self._link)

    @property
    def channel(self) -> str | None:
        """The process channel, once made."""
        return self._channel

    def waited_for(self) -> list[str]:
        """The ids of the jobs that have local waiters."""
        with self._lock:
            return list(self.waiters)

    def unsubscribe(self, job_id: str, waiter: Waiter) -> None:
        """Forget ``waiter``; the last local waiter of a job leaves the job's group."""
        with self._lock:
            waiters = self.waiters.get(job_id)
            if waiters is None:
                return
            waiters.discard(waiter)
            if waiters:
                return
            del self.waiters[job_id]
            join = self.joins.pop(job_id, None)
        self._link.fire(self._leave(job_id, join))

    # -- on the link's loop ----------------------------------------------------------------

    async def _join(self, job_id: str) -> bool | None:
        channel = await self._process_channel()
        if channel is None:
            return False
        layer = self._link.layer
        async with self._serial.hold(job_id):
            if self._link.degraded_now():
                return None  # skipped: nothing was sent, nothing to leave
            # Before the call: a call that times out may still have reached the server.
            self._joined.add(job_id)
            return await self._link.call(
                "group_add", lambda: layer.group_add(group_for(job_id), channel)
            )

    async def _leave(self, job_id: str, join: Future[Any] | None) -> None:
        if join is not None:  # leave after the join, not before it (it may still be running)
            await asyncio.wait([asyncio.wrap_future(join)])  # never raises
        async with self._serial.hold(job_id):
            await self._discard(job_id)

    async def _discard(self, job_id: str, *, closing: bool = False) -> None:
        """Leave the job's group, unless a new local waiter relies on it; tried even while
        degraded (a group_add that timed out may have landed), bounded like any call."""
        channel = self._channel
        if channel is None or job_id not in self._joined:
            return
        with self._lock:
            if job_id in self.waiters and not closing:
                return
        layer = self._link.layer
        answered = await self._link.call(
            "group_discard", lambda: layer.group_discard(group_for(job_id), channel), gated=False
        )
        if answered:
            self._joined.discard(job_id)

    async def leave_leftovers(self, *, closing: bool = False) -> None:
        """Leave every group joined and not left yet that no local waiter needs (``closing``:
        every one, the process channel dies with the hub)."""
        jobs = list(self._joined)

        async def leave(job_id: str) -> None:
            async with self._serial.hold(job_id):
                await self._discard(job_id, closing=closing)

        if jobs:
            await asyncio.gather(*(leave(job_id) for job_id in jobs), return_exceptions=True)

    def retry_leaves(self) -> None:
        """The layer answers again (called on the link's loop): leave what could not be."""
        if self._joined:
            self._link.fire(self.leave_leftovers())

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
                    new_process_channel(self._link.layer), timeout=conf.settings.NOTIFY_TIMEOUT
                )
            except Exception as exc:
                self._link.degrade("new_channel", exc)
                return None
            self._channel = channel
            self._receiver = asyncio.get_running_loop().create_task(
                keep_running("the 'finished' receive loop", lambda: self._receive_loop(channel)),
                name="djq-loop-receive",
            )
        return self._channel

    async def _receive_loop(self, channel: str) -> None:
        while True:
            pause = min(DEGRADED_RETRY, conf.settings.POLL_INTERVAL)
            received, message = await self._link.receive(channel, "finished", pause)
            if received:
                self.handle(message)

    def handle(self, message: object) -> None:
        """Pass a message received on the process channel on to the job's waiters; anything
        but a well-formed "finished" or "progress" message is ignored (and logged,
        rate-limited)."""
        parsed = job_message(message)
        if parsed is None:
            self._link.ignore("finished", message)
            return
        kind, job_id = parsed
        state = None
        if kind == FINISHED_TYPE:
            completed = completed_outcome(message)
            if completed is not None:
                state = JobState(Status.COMPLETED, completed[0], completed[1], "")
        self.deliver(job_id, progress=kind != FINISHED_TYPE, state=state)

    def deliver(
        self, job_id: str, *, progress: bool = False, state: JobState | None = None
    ) -> None:
        """Pass "finished" (with the job's final ``state`` when the message carried it) or
        "progress" on to the local waiters of ``job_id``."""
        with self._lock:
            waiters = list(self.waiters.get(job_id, ()))
        for waiter in waiters:
            try:
                if progress:
                    waiter.progress()
                else:
                    waiter.notify(state)
            except Exception:  # one broken waiter must not stop the others' notifications
                logger.exception("notifying a waiter of job %s failed", job_id)
