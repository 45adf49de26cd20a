"""Claimed jobs whose name this worker does not know: code deployed out of order.

During a rolling deploy the code that enqueues a new job name can be live before every
worker runs the release that defines it. A worker that claims such a job gives it back unrun
(:meth:`JobQuerySet.give_back`: queued again, its attempt undone), to run no earlier than a
short delay from now, so a worker that knows the name runs it and this one does not claim it
again at once. Only once the job has waited ``UNKNOWN_JOB_GRACE`` seconds since its enqueue
(on the database's clock) is it dead-lettered with ``JobNotRegistered``; ``0`` dead-letters
at once.

Cost, while no worker knows the name: each such job is claimed and given back at most once
per delay by the whole fleet, in the claim's batches (one give-back statement per batch).
The delay starts at :data:`GIVE_BACK_MIN` seconds (a worker that knows the name takes the
job within about that plus its ``POLL_INTERVAL``) and grows with how long this worker has
been seeing the name unknown, up to :data:`GIVE_BACK_MAX`. One log line per name at most
every :data:`LOG_EVERY` seconds, with the count since the last.
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

#: Seconds a given-back job waits before any worker may claim it again, at first.
GIVE_BACK_MIN = 1.0
#: The longest such wait: a name unknown for ten times this long waits this long.
GIVE_BACK_MAX = 30.0
#: Seconds between two log lines about one unknown name.
LOG_EVERY = 60.0
#: A name not seen for this long starts again from GIVE_BACK_MIN (a new deploy).
FORGET_AFTER = 10 * GIVE_BACK_MAX


@dataclass(slots=True)
class _Seen:
    """What this worker saw of one unknown name (``time.monotonic()`` moments)."""

    first: float
    last: float
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

    def delay(self, name: str, now: float) -> float:
        """Seconds a given-back job of ``name`` waits: a tenth of how long this worker has
        seen the name unknown, from GIVE_BACK_MIN to GIVE_BACK_MAX."""
        seen = self._seen.get(name)
        unknown_for = 0.0 if seen is None else now - seen.first
        return min(GIVE_BACK_MAX, max(GIVE_BACK_MIN, unknown_for / 10))

    def handle(self, jobs: Sequence[ClaimedJob]) -> None:
        """Give back ``jobs`` (claimed, never started, names unknown here), or dead-letter
        those enqueued more than ``UNKNOWN_JOB_GRACE`` seconds ago."""
        if not jobs:
            return
        mono = time.monotonic()
        for name in {job.name for job in jobs}:
            seen = self._seen.get(name)
            if seen is None or mono - seen.last > FORGET_AFTER:
                self._seen[name] = _Seen(first=mono, last=mono)
            else:
                seen.last = mono
        grace = conf.settings.UNKNOWN_JOB_GRACE
        given: set[int] = set()
        if grace > 0:
            now = clock.now()
            by_delay: dict[float, list[ClaimedJob]] = {}
            for job in jobs:
                by_delay.setdefault(self.delay(job.name, mono), []).append(job)
            for delay, batch in by_delay.items():
                given |= Job.objects.using(self.using).give_back(
                    [job.fence for job in batch],
                    run_after=now + timedelta(seconds=delay),
                    enqueued_after=now - timedelta(seconds=grace),
                )
        for job in jobs:
            if job.id in given:
                self.given_back += 1
                self._log(job.name, mono)
            else:  # past the grace (or the lease was lost: the fenced write is a no-op)
                self.dead_lettered += 1
                self.writer.not_registered(job)

    def _log(self, name: str, mono: float) -> None:
        seen = self._seen[name]
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
