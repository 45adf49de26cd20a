"""One attempt while it runs, as its attempt function, the runner and the time limits see it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..base import ClaimedJob
from ..context import Progress
from ..registry import RegisteredJob


@dataclass(slots=True, eq=False)
class RunningJob:
    """One attempt while it runs (on a worker, or inline): what :mod:`.attempt` needs to run
    it, and what the worker may need to reach it from outside its thread (to cancel it, to
    time it out, to write its progress). Filled in by the thread or task that runs it."""

    job: ClaimedJob
    definition: RegisteredJob
    #: The name of who runs it (``JobContext.worker``), and the job's database (where
    #: ``@job(atomic=True)`` runs its transaction).
    worker: str
    using: str
    #: Called (from the job's thread) when it reports progress the worker should write.
    wake: Callable[[], None] | None = None
    started: float = field(default_factory=time.monotonic)
    #: Set when someone asked the job to stop (``JobContext.cancel_requested`` reads it).
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: The running thread's id (sync jobs), once it started.
    thread_id: int | None = None
    #: The running task (``async def`` jobs), once it started.
    task: asyncio.Future[Any] | None = None
    #: The last progress the job reported, and whether the worker has yet to write it.
    progress: Progress | None = None
    progress_pending: bool = False
    #: When (``time.monotonic()``) its progress was last taken for writing.
    progress_written: float = 0.0

    def report_progress(self, progress: Progress) -> None:
        """From the job's thread: keep ``progress``; wake the worker once per write."""
        self.progress = progress
        if not self.progress_pending:
            self.progress_pending = True
            if self.wake is not None:
                self.wake()
