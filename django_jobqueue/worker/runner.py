"""Running jobs: sync jobs on a pool of threads, async jobs on one event loop thread.

Each run ends in an :class:`~.outcomes.Outcome` handed to ``report`` (from the job's thread);
the runner never touches the queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .. import signals, telemetry
from ..base import ClaimedJob
from ..models import Job
from ..notifications import run_loop
from ..registry import registry
from .outcomes import Outcome, describe, failed, succeeded

if TYPE_CHECKING:
    from ..decorators import JobFunction


@dataclass(slots=True, eq=False)
class RunningJob:
    """One attempt while it runs: what the worker may need to reach it from outside its
    thread (to cancel it, to time it out). Filled in by the thread or task that runs it."""

    job: ClaimedJob
    definition: JobFunction[Any, Any]
    started: float = field(default_factory=time.monotonic)
    #: Set when someone asked the job to stop (``JobContext.cancel_requested`` reads it).
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: The running thread's id (sync jobs), once it started.
    thread_id: int | None = None
    #: The running task (``async def`` jobs), once it started.
    task: asyncio.Future[Any] | None = None


class Runner:
    """Runs claimed jobs, ``concurrency`` sync ones at a time; reports each outcome."""

    def __init__(self, concurrency: int, report: Callable[[Outcome], None]) -> None:
        self.concurrency = concurrency
        self.report = report
        #: The attempts running now, by job pk (added by start(), removed before report()).
        self.running: dict[int, RunningJob] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_thread = threading.Thread()

    def open(self) -> None:
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="django-jobqueue-job")

    def close(self) -> None:
        """Wait for the running sync jobs; stop the async loop (its jobs have reported)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def stop_async(self) -> None:
        if self._async_loop is not None:
            self._async_loop.call_soon_threadsafe(self._async_loop.stop)
            self._async_thread.join(timeout=5.0)

    def start(self, job: ClaimedJob) -> None:
        """Send ``job_started`` and start ``job`` (registered) on its pool or loop."""
        definition = registry.get(job.name)
        if signals.job_started.has_listeners():
            signals.send_robust(
                signals.job_started, sender=Job, job_id=job.job_id, attempt=job.attempts
            )
        running = RunningJob(job, definition)
        self.running[job.id] = running
        if definition.is_async:
            asyncio.run_coroutine_threadsafe(self._run_async(running), self._get_async_loop())
        else:
            assert self._pool is not None
            self._pool.submit(self._run_sync, running)

    def _finish(self, running: RunningJob, outcome: Outcome) -> None:
        self.running.pop(running.job.id, None)
        self.report(outcome)

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
        job = running.job
        running.thread_id = threading.get_ident()
        close_old_connections()
        started = time.monotonic()
        try:
            result = telemetry.run(job, running.definition.func)
            outcome = succeeded(job, result, started)
        except BaseException as exc:  # a job's failure, whatever it is, is the job's outcome
            outcome = failed(job, started, describe(exc))
        finally:
            close_old_connections()
        self._finish(running, outcome)

    async def _run_async(self, running: RunningJob) -> None:
        job = running.job
        running.task = asyncio.current_task()
        # The ORM of async jobs runs on asgiref's one sync thread: drop its connection if it
        # broke or aged, as a sync job's thread does (channels' database_sync_to_async).
        await sync_to_async(close_old_connections)()
        started = time.monotonic()
        try:
            result = await telemetry.arun(job, running.definition.func)
            outcome = succeeded(job, result, started)
        except BaseException as exc:
            outcome = failed(job, started, describe(exc))
        finally:
            await sync_to_async(close_old_connections)()
        self._finish(running, outcome)
