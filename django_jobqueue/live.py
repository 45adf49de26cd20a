"""Live status of watched jobs, for the WebSocket consumer and the JSON status view.

Per event loop (an ASGI server runs one per process), :class:`LiveJobs` keeps the jobs its
watchers follow. A job's first watcher subscribes it through the hub (one waiter per job,
whatever the number of watchers: the hub multiplexes every job over one process channel),
marks it as waited for (so its worker sends "finished"), and only then reads it: a watcher
that joins late still starts from the current state. After that, a "progress" or "finished"
message marks the job as due; one task per loop reads every due job in one query (through
``database_sync_to_async``, so no connection is held between reads) and passes each watcher
the new state if it differs from the last one it was sent.

The database is the truth: the process's one poller for lost notifications (the safety
net of :mod:`django_jobqueue.notifications.safetynet`) has the same task read every watched
job each ``POLL_INTERVAL`` when the channel layer cannot carry messages between processes
(no layer, the in-memory layer, a degraded one), and every
:data:`~django_jobqueue.notifications.RESYNC` seconds otherwise, so a dropped message
delays an update, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from channels.db import database_sync_to_async

from . import conf
from .base import FINISHED, Status
from .models import Job
from .notifications import Hub, Subscription, Waiter, hub, runtime
from .routers import queue_databases
from .tokens import Watch

logger = logging.getLogger("django_jobqueue")

#: Job ids per query.
READ_BATCH = 500

#: What the consumer and the status view send: ``{"status", "progress"}`` plus ``"result"``
#: once completed or ``"error"`` once failed or cancelled.
Message = dict[str, Any]
#: A watcher: called on the loop with each new state; None when the job is gone (pruned).
Sink = Callable[[Message | None], Awaitable[None]]


def status_message(status: str, progress: Any, result: Any, error: str) -> Message:
    """The message of a job in ``status``: ``result`` only once completed, ``error`` only
    once failed (the last error) or cancelled (``"cancelled"``)."""
    message: Message = {"status": status, "progress": progress}
    if status == Status.COMPLETED:
        message["result"] = result
    elif status == Status.FAILED:
        message["error"] = error
    elif status == Status.CANCELLED:
        message["error"] = Status.CANCELLED.value
    return message


def is_final(message: Message) -> bool:
    """True for the message of a finished job: the last one a watcher gets."""
    return message["status"] in FINISHED


def read_states(job_ids: Sequence[str]) -> dict[str, Message]:
    """The message of each of ``job_ids`` that exists, one query per :data:`READ_BATCH`."""
    states: dict[str, Message] = {}
    for alias in queue_databases():  # queues on databases of their own: each in turn
        left = [job_id for job_id in job_ids if job_id not in states]
        for start in range(0, len(left), READ_BATCH):
            rows = (
                Job.objects.using(alias)
                .filter(job_id__in=left[start : start + READ_BATCH])
                .values_list(
                    "job_id",
                    "status",
                    "progress",
                    "last_error",
                    "outcome__result",
                    "outcome__error",
                )
            )
            for job_id, status, progress, last_error, result, error in rows:
                states[job_id] = status_message(status, progress, result, error or last_error)
    return states


def read_state(job_id: str) -> Message | None:
    """The message of one job, or None if there is no such job (any more)."""
    return read_states([job_id]).get(job_id)


def is_run(watch: Watch) -> bool:
    """True when the job of ``watch`` still is the run its token named (one index lookup);
    a token made before tokens named runs names whichever run is there."""
    if watch.run is None:
        return True
    return any(
        Job.objects.using(alias).filter(job_id=watch.job_id, pk=watch.run).exists()
        for alias in queue_databases()
    )


def _subscribe_and_read(new: Iterable[str], job_ids: Sequence[str]) -> dict[str, Message]:
    """Mark the jobs of ``new`` as waited for, then read ``job_ids``."""
    for job_id in new:
        for alias in queue_databases():
            subscribed = Job.objects.using(alias).subscribe(job_id)
            if subscribed is not None:
                if subscribed.ready_queue is not None:
                    hub().wake_workers([subscribed.ready_queue])
                break
    return read_states(job_ids)


class _Poke(Waiter):
    """The hub's waiter of one watched job: any message marks the job as due."""

    def __init__(self, live: LiveJobs, job_id: str) -> None:
        self._live = live
        self._job_id = job_id

    def notify(self, state: Any = None) -> None:
        self._live.poke(self._job_id)

    def progress(self) -> None:
        self._live.poke(self._job_id)


class _Watched:
    __slots__ = ("hub", "job_id", "sent", "subscription", "waiter")

    def __init__(self, job_id: str, hub: Hub, waiter: Waiter, subscription: Subscription):
        self.job_id = job_id
        self.hub = hub
        self.waiter = waiter
        self.subscription = subscription
        self.sent: dict[Sink, Message | None] = {}  # each watcher and the last state it got


class LiveJobs:
    """The watched jobs of one event loop. Use :func:`live_jobs` to get it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: dict[str, _Watched] = {}
        self._due: set[str] = set()
        self._new: set[str] = set()  # not marked as waited for in the database yet
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync: int | None = None  # the safety net's token while jobs are watched
        #: Reads made so far (one per batch of due jobs).
        self.reads = 0

    @property
    def watchers(self) -> int:
        return sum(len(watched.sent) for watched in self._jobs.values())

    def jobs(self) -> list[str]:
        return list(self._jobs)

    def add(self, job_id: str, sink: Sink) -> None:
        """Watch ``job_id``: ``sink`` gets its current state soon, then each change."""
        watched = self._jobs.get(job_id)
        if watched is None:
            notifier = hub()
            waiter = _Poke(self, job_id)
            subscription = notifier.start_subscribe(job_id, waiter)
            watched = self._jobs[job_id] = _Watched(job_id, notifier, waiter, subscription)
            self._new.add(job_id)
        watched.sent[sink] = None
        self._mark(job_id)
        if self._resync is None:
            self._resync = runtime.safety_net.add_resync(self.resync)
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._run(), name="djq-live-jobs")

    def remove(self, job_id: str, sink: Sink) -> None:
        """Stop passing ``job_id``'s states to ``sink``; the job's last watcher unsubscribes."""
        watched = self._jobs.get(job_id)
        if watched is None:
            return
        watched.sent.pop(sink, None)
        if not watched.sent:
            del self._jobs[job_id]
            self._new.discard(job_id)
            self._due.discard(job_id)
            watched.hub.unsubscribe(job_id, watched.waiter)
        if not self._jobs:
            self._wake.set()  # the task ends
            if self._resync is not None:
                runtime.safety_net.discard_resync(self._resync)
                self._resync = None

    def poke(self, job_id: str) -> None:
        """Mark ``job_id`` as due for a read (any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody watches
            self._loop.call_soon_threadsafe(self._mark, job_id)

    def resync(self) -> None:
        """Mark every watched job as due for a read (any thread): the safety net's call."""
        try:
            self._loop.call_soon_threadsafe(self._mark_all)
        except RuntimeError:  # the loop closed: nobody watches any more
            token, self._resync = self._resync, None
            if token is not None:
                runtime.safety_net.discard_resync(token)

    def _mark(self, job_id: str) -> None:
        if job_id in self._jobs:
            self._due.add(job_id)
            self._wake.set()

    def _mark_all(self) -> None:
        if self._jobs:
            self._due.update(self._jobs)
            self._wake.set()

    async def _run(self) -> None:
        while self._jobs:
            await self._wake.wait()
            self._wake.clear()
            due = sorted(self._due & self._jobs.keys())
            self._due.clear()
            if due:
                try:
                    await self._read(due)
                except Exception:  # never let one bad read stop every watcher's updates
                    logger.exception("live status: passing on the state of watched jobs failed")
                    self._due.update(due)
                    await asyncio.sleep(float(conf.get("POLL_INTERVAL")))
                    self._wake.set()  # try them again now

    async def _read(self, due: list[str]) -> None:
        new = [job_id for job_id in due if job_id in self._new]
        self._new.difference_update(new)
        # Subscribe before reading: a change after this read sends a message we receive.
        await asyncio.gather(*(self._jobs[job_id].subscription.aconfirm() for job_id in new))
        try:
            states = await database_sync_to_async(_subscribe_and_read)(new, due)
        except Exception:
            logger.exception("reading the state of watched jobs failed; trying again")
            self._new.update(job_id for job_id in new if job_id in self._jobs)
            self._due.update(due)
            await asyncio.sleep(float(conf.get("POLL_INTERVAL")))
            self._wake.set()  # try them again now
            return
        self.reads += 1
        for job_id in due:
            watched = self._jobs.get(job_id)
            if watched is not None:
                await self._deliver(watched, states.get(job_id))

    async def _deliver(self, watched: _Watched, message: Message | None) -> None:
        for sink, last in list(watched.sent.items()):
            if sink not in watched.sent or (message is not None and message == last):
                continue
            watched.sent[sink] = message
            try:
                await sink(message)
            except Exception:  # one broken watcher must not stop the others' updates
                logger.exception("passing job %s's state to a watcher failed", watched.job_id)


def live_jobs() -> LiveJobs:
    """The :class:`LiveJobs` of the running event loop (owned by the process's runtime)."""
    return runtime.watchers(asyncio.get_running_loop(), LiveJobs)
