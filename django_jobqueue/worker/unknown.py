"""Claimed jobs whose name this worker does not know: code deployed out of order.

During a rolling deploy the code that enqueues a new job name can be live before every
worker runs the release that defines it. A worker that claims such a job gives it back unrun
(:meth:`JobQuerySet.give_back`: queued again, its attempt undone, ready again
:data:`GIVE_BACK_SECONDS` from now), so a worker that knows the name runs it; and it leaves
that name out of its own claims for :data:`SKIP_SECONDS` (``skip_names`` of the claim), so
it does not claim it again and again. Only once the job has waited ``UNKNOWN_JOB_GRACE``
seconds since its enqueue (on the database's clock) is it dead-lettered with
``JobNotRegistered`` by a worker that claims it; ``0`` dead-letters at once.

Cost, while no worker knows the name: each worker claims jobs of that name in one claim
batch per :data:`SKIP_SECONDS` (one claim, one give-back statement), however many of them
are queued. One log line per name at most every :data:`LOG_EVERY` seconds, with the count
since the last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .. import clock, conf
from ..base import ClaimedJob
from ..models import Job
from .writer import Writer

logger = logging.getLogger("django_jobqueue.worker")

#: Seconds a given-back job waits before any worker may claim it again: this worker's next
#: claims are quicker than a worker that knows the name polls.
GIVE_BACK_SECONDS = 1.0
#: Seconds a worker leaves a name it does not know out of its claims after giving jobs of
#: it back; then it claims them again (a job past the grace is dead-lettered then).
SKIP_SECONDS = 30.0
#: Seconds between two log lines about one unknown name.
LOG_EVERY = 60.0


@dataclass(slots=True)
class _Seen:
    """What this worker saw of one unknown name (``time.monotonic()`` moments)."""

    skip_until: float
    logged: float = float("-inf")
    given_back: int = 0


class UnknownNames:
    """Gives back (or, past the grace, dead-letters) the claimed runs whose name the
    worker's registry lacks; ``writer`` dead-letters."""

    def __init__(self, using: str, worker: str, writer: Writer) -> None:
        self.using = using
        self.worker = worker
        self.writer = writer
        self._seen: dict[str, _Seen] = {}
        #: Runs given back and dead-lettered so far (for tests and debugging).
        self.given_back = 0
        self.dead_lettered = 0

    def skipped(self) -> frozenset[str]:
        """The names the worker's claims leave out now (``Claimer.skip_names``)."""
        if not self._seen:
            return frozenset()
        mono = time.monotonic()
        return frozenset(name for name, seen in self._seen.items() if seen.skip_until > mono)

    def handle(self, jobs: Sequence[ClaimedJob]) -> None:
        """Give back ``jobs`` (claimed, never started, names unknown here), or dead-letter
        those enqueued more than ``UNKNOWN_JOB_GRACE`` seconds ago."""
        if not jobs:
            return
        mono = time.monotonic()
        grace = conf.settings.UNKNOWN_JOB_GRACE
        given: set[int] = set()
        if grace > 0:
            now = clock.now()
            given = Job.objects.using(self.using).give_back(
                [job.fence for job in jobs],
                run_after=now + timedelta(seconds=GIVE_BACK_SECONDS),
                enqueued_after=now - timedelta(seconds=grace),
            )
        for job in jobs:
            if job.id in given:
                self.given_back += 1
                seen = self._seen.setdefault(job.name, _Seen(skip_until=mono))
                seen.skip_until = mono + SKIP_SECONDS
                self._log(seen, job.name, mono)
            else:  # past the grace (or the lease was lost: the fenced write is a no-op)
                self.dead_lettered += 1
                self.writer.not_registered(job)

    def _log(self, seen: _Seen, name: str, mono: float) -> None:
        seen.given_back += 1
        if mono - seen.logged < LOG_EVERY:
            return
        logger.warning(
            "worker name=%s: gave back %d job(s) named %r unrun: no job of this process has "
            "that name (deployed out of order?); a worker that knows it runs them, and "
            "after UNKNOWN_JOB_GRACE=%gs since its enqueue a job is dead-lettered",
            self.worker,
            seen.given_back,
            name,
            conf.settings.UNKNOWN_JOB_GRACE,
        )
        seen.logged = mono
        seen.given_back = 0
