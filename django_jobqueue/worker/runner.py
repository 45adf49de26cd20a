"""Running jobs: sync jobs on a pool of threads, async jobs on one event loop thread.

Each run is one attempt (:mod:`.attempt`, the function every way of running a job calls) and
ends in an :class:`~.outcomes.Outcome` handed to ``report`` (from the job's thread); the
runner never touches the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from ..base import ClaimedJob
from ..context import Progress
from ..notifications import run_loop
from ..registry import registry
from ..routers import queue_database
from . import attempt
from .attempt import announce_start, conclude
from .outcomes import Outcome
from .running import RunningJob
from .timelimits import TimeLimits


class Runner:
    """Runs claimed jobs, ``concurrency`` sync ones at a time; reports each outcome."""

    def __init__(
        self,
        concurrency: int,
        report: Callable[[Outcome], None],
        *,
        name: str = "",
        wake: Callable[[], None] | None = None,
        using: str | None = None,
    ) -> None:
        self.concurrency = concurrency
        #: The job's database: where ``@job(atomic=True)`` runs its transaction.
        self.using = using or queue_database()
        self.report = report
        #: The worker's name, for ``JobContext.worker``.
        self.name = name
        #: Called (from a job's thread) when a job reports progress the worker should write.
        self.wake = wake
        #: How ``job_started`` is sent (the worker sets its writer's: after the short path's
        #: transaction, which holds the claim, commits).
        self.after_commit: Callable[[Callable[[], None]], None] = lambda action: action()
        #: The attempts running now, by job pk (added by start(), removed before report()).
        self.running: dict[int, RunningJob] = {}
        #: The deadlines of attempts with a time limit, and the threads of sync ones.
        self.limits = TimeLimits(self.running, report)
        self._pool: ThreadPoolExecutor | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_thread = threading.Thread()

    def open(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="django-jobqueue-job")

    def close(self) -> None:
        """Wait for the running sync jobs; stop the async loop (its jobs have reported)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.limits.close()

    def stop_async(self) -> None:
        if self._async_loop is not None:
            self._async_loop.call_soon_threadsafe(self._async_loop.stop)
            self._async_thread.join(timeout=5.0)

    def start(self, job: ClaimedJob) -> None:
        """Send ``job_started`` and start ``job`` (registered) on its pool or loop."""
        running = RunningJob(
            job, registry.get(job.name), worker=self.name, using=self.using, wake=self.wake
        )
        self.after_commit(partial(announce_start, running))
        self.running[job.id] = running
        if job.time_limit is not None:  # worker/timelimits.py
            self._start_timed(running)
        elif running.definition.is_async:
            asyncio.run_coroutine_threadsafe(self._run_async(running), self._get_async_loop())
        else:
            assert self._pool is not None
            self._pool.submit(self._run_sync, running)

    def _start_timed(self, running: RunningJob) -> None:
        """Start an attempt that has a time limit, its clock first (it may end at once)."""
        self.limits.watch(running)
        if running.definition.is_async:
            future = asyncio.run_coroutine_threadsafe(
                self._run_async(running), self._get_async_loop()
            )
            self.limits.cancel_with(running, future.cancel)
        else:
            self.limits.submit(running, self._run_sync)

    def _finish(self, running: RunningJob, outcome: Outcome) -> None:
        if running.job.time_limit is not None and not self.limits.settle(running):
            return  # its time limit passed first: that failure was reported, this is late
        if self.running.get(running.job.id) is running:  # not a later claim of the job
            del self.running[running.job.id]
        self.report(conclude(running, outcome))

    # -- cancelling and progress (called from the worker's main thread) -------------------

    def cancel(self, ids: set[int]) -> set[int]:
        """Ask the running jobs ``ids`` (pks) to stop: set their ``cancel_requested``, and
        cancel an ``async def`` job's task; return the ids that were running here."""
        found = set()
        for pk in ids:
            running = self.running.get(pk)
            if running is None or running.cancelled.is_set():
                continue
            found.add(pk)
            running.cancelled.set()
            task = running.task  # read after the flag: a task starting now checks the flag
            if task is not None and self._async_loop is not None:
                self._async_loop.call_soon_threadsafe(task.cancel)
        return found

    def take_progress(self, now: float, interval: float) -> list[tuple[ClaimedJob, Progress]]:
        """The progress reported since the last write of each running job, if its last write
        is at least ``interval`` seconds old (``now`` is ``time.monotonic()``)."""
        taken: list[tuple[ClaimedJob, Progress]] = []
        for running in list(self.running.values()):
            if running.progress_pending and now - running.progress_written >= interval:
                running.progress_pending = False
                running.progress_written = now
                if running.progress is not None:
                    taken.append((running.job, running.progress))
        return taken

    def put_back_progress(self, ids: list[int]) -> None:
        """The progress taken for ``ids`` could not be written: write it next time."""
        for pk in ids:
            running = self.running.get(pk)
            if running is not None:
                running.progress_pending = True
                running.progress_written = 0.0

    def progress_due(self, interval: float) -> float | None:
        """When (``time.monotonic()``) the next progress write falls due; None: none waits."""
        due = [
            running.progress_written + interval
            for running in list(self.running.values())
            if running.progress_pending
        ]
        return min(due) if due else None

    def _get_async_loop(self) -> asyncio.AbstractEventLoop:
        if self._async_loop is None:
            loop = asyncio.new_event_loop()
            self._async_thread = threading.Thread(
                target=run_loop, args=(loop,), name="django-jobqueue-async-jobs", daemon=True
            )
            self._async_thread.start()
            self._async_loop = loop
        return self._async_loop

    def _run_sync(self, running: RunningJob) -> None:
        close_old_connections()
        try:
            outcome = attempt.run(running)  # worker/attempt.py
        finally:
            close_old_connections()
        self._finish(running, outcome)

    async def _run_async(self, running: RunningJob) -> None:
        running.task = asyncio.current_task()
        try:
            # The ORM of async jobs runs on asgiref's one sync thread: drop its connection if
            # it broke or aged, as a sync job's thread does (channels' database_sync_to_async).
            await sync_to_async(close_old_connections)()
        except BaseException as exc:
            outcome = attempt.failed_with(running, time.monotonic(), exc)
        else:
            outcome = await attempt.arun(running)  # worker/attempt.py
        with contextlib.suppress(asyncio.CancelledError):  # a cancel as it ended: recorded
            await sync_to_async(close_old_connections)()
        self._finish(running, outcome)
