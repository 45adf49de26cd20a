"""Upkeep on timers: renewing the leases of held jobs (the heartbeat) and the worker's
heartbeat row, requeueing or dead-lettering jobs whose worker stopped renewing theirs,
pruning expired results, enqueueing due periodic jobs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Protocol

from .. import clock, conf, telemetry
from ..base import CLAIM_COLUMNS, ClaimedJob, Ending, Status
from ..handles import announce
from ..limits import LONGEST_RATE_PERIOD
from ..models import DeadLetter, Job
from ..notifications import hub
from ..producing import start_reruns
from ..querysets import JobQuerySet
from ..serialization import printable
from .outcomes import backoff

logger = logging.getLogger("django_jobqueue.worker")

REAP_BATCH = 100
#: While finished jobs wait to be pruned, the share of the main loop's time spent deleting
#: them; the rest stays for claims and completions.
PRUNE_SHARE = 0.25
#: Seconds between two deletions of rate-limit starts of keys no claim deletes any more (the
#: first one this long after the start): they only take room, so rarely is enough.
LIMIT_PRUNE_INTERVAL = 60.0


class DeadLetterer(Protocol):
    """The signature of :meth:`.writer.Writer.dead_letter` as upkeep calls it."""

    def __call__(
        self, job: ClaimedJob, error: str, trace: str, *, lease_expired_before: datetime
    ) -> bool: ...


class Upkeep:
    """The worker's periodic writes, each on its own timer (``time.monotonic()`` values).

    ``held()`` lists the jobs whose leases to renew; ``lost(ids)`` is told of those whose
    lease another worker took; ``dead_letter`` ends a reaped job on its last attempt;
    ``cancel(ids)`` is told of held jobs someone asked to stop (each heartbeat reads it).
    """

    def __init__(
        self,
        using: str,
        *,
        held: Callable[[], Iterable[ClaimedJob]],
        lost: Callable[[set[int]], None],
        dead_letter: DeadLetterer,
        cancel: Callable[[set[int]], None] | None = None,
        beat: Callable[[], None] | None = None,
        schedule: Callable[[], float] | None = None,
    ) -> None:
        self.using = using
        #: Called on the heartbeat timer: the worker's heartbeat row.
        self.beat = beat
        #: Enqueues due periodic jobs; returns seconds until the next tick. None: no
        #: schedules (or ``--no-schedule``): no timer, no statement.
        self.schedule = schedule
        self.held = held
        self.lost = lost
        self.dead_letter = dead_letter
        self.cancel = cancel
        self.next_heartbeat = 0.0
        self.next_reap = 0.0
        self.next_prune = 0.0
        self.next_limit_prune = time.monotonic() + LIMIT_PRUNE_INTERVAL
        self.next_schedule = 0.0 if schedule is not None else math.inf

    def _jobs(self) -> JobQuerySet:
        return Job.objects.using(self.using)

    def due(self, *, stopping: bool) -> float:
        """When the next timer that should wake the loop falls due."""
        if stopping:
            return self.next_heartbeat
        return min(self.next_heartbeat, self.next_reap, self.next_prune, self.next_schedule)

    def periodic(self, now: float) -> None:
        clock.sync_if_due(self.using)  # leases and reaping on the database's clock
        self.heartbeat_if_due(now)
        if now >= self.next_reap:
            self.next_reap = now + max(0.5, min(5.0, conf.settings.LEASE_SECONDS / 2))
            self.reap()
            self.start_reruns()
        if now >= self.next_prune:
            self.prune_step(now)
        if now >= self.next_limit_prune:
            self.next_limit_prune = now + LIMIT_PRUNE_INTERVAL
            self.prune_limit_starts()
        if self.schedule is not None and now >= self.next_schedule:
            self.next_schedule = now + 1.0  # a failing pass is retried a second later
            self.next_schedule = now + self.schedule()

    def heartbeat_if_due(self, now: float) -> None:
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + conf.heartbeat_interval()
            self.heartbeat()
            if self.beat is not None:
                self.beat()

    def heartbeat_now(self) -> None:
        """Make the next heartbeat due at once (a cancel request came by notification: the
        renewal reads the flags from the database, which stays the truth)."""
        self.next_heartbeat = 0.0

    def heartbeat(self) -> None:
        held = list(self.held())
        if not held:
            return
        lease_until = clock.now() + timedelta(seconds=conf.settings.LEASE_SECONDS)
        ours = self._jobs().renew_leases([job.fence for job in held], lease_until)
        lost = [job for job in held if job.id not in ours]
        for job in lost:
            logger.warning(
                "lease lost id=%s name=%s attempt=%d: another worker may run it; this run's "
                "outcome will be discarded",
                printable(job.job_id),
                printable(job.name),
                job.attempts,
            )
        if lost:
            self.lost({job.id for job in lost})
        if ours.cancel_requested and self.cancel is not None:
            self.cancel(set(ours.cancel_requested))

    def start_reruns(self) -> None:
        """Queue the runs asked for while a job ran (``on_duplicate="rerun"``) of jobs that
        have finished since: one indexed read when there are none (``djq_rerun``)."""
        announce(start_reruns(self.using))

    def reap(self) -> None:
        """Requeue (or dead-letter) running jobs whose worker stopped renewing their lease."""
        now = clock.now()
        expired = list(self._jobs().expired_leases(now).order_by("lease_expires_at")[:REAP_BATCH])
        for row in expired:
            job = ClaimedJob(**{column: getattr(row, column) for column in CLAIM_COLUMNS})
            error = (
                f"Lease expired: the worker running attempt {job.attempts} ({row.worker or '?'}) "
                "stopped or lost its database connection."
            )
            if job.attempts >= job.max_attempts:
                self.dead_letter(job, error, "", lease_expired_before=now)
                continue
            requeued = self._jobs().retry(
                *job.fence,
                run_after=now + timedelta(seconds=backoff(job.attempts)),
                error=error,
                lease_expired_before=now,
                now=now,
                result_ttl=job.result_ttl,
            )
            if requeued is not None and requeued[0] == Status.CANCELLED:
                logger.warning(
                    "lease expired id=%s name=%s attempt=%d/%d: cancelled (a cancel was requested)",
                    printable(job.job_id),
                    printable(job.name),
                    job.attempts,
                    job.max_attempts,
                )
                if requeued[1]:
                    hub().job_finished([job.job_id])
            elif requeued:
                telemetry.attempt_ended(job, Ending.RETRIED, 0.0)  # it never ended here
                logger.warning(
                    "lease expired id=%s name=%s attempt=%d/%d: requeued",
                    printable(job.job_id),
                    printable(job.name),
                    job.attempts,
                    job.max_attempts,
                )

    def prune_step(self, now: float) -> int:
        """One batch of :meth:`prune`, and when the next one falls due: after
        ``PRUNE_INTERVAL`` if the batch emptied the backlog, else as soon as the loop has
        spent three times the batch's duration on other work (``PRUNE_SHARE``), so a backlog
        is worked off in short transactions, at a pace that grows with the rate jobs finish
        at, without starving claims."""
        started = time.monotonic()
        deleted = self.prune()
        if deleted >= conf.settings.PRUNE_BATCH:
            took = time.monotonic() - started
            self.next_prune = time.monotonic() + took * (1 - PRUNE_SHARE) / PRUNE_SHARE
        else:
            self.next_prune = now + conf.settings.PRUNE_INTERVAL
        return deleted

    def prune(self) -> int:
        """Delete one batch (``PRUNE_BATCH``) of finished jobs past their ``result_ttl``,
        with their results (then, if it deleted any, of job batches gone with their jobs:
        :meth:`~.JobQuerySet.prune_batches`), and one of dead letters past
        ``DEAD_LETTER_TTL`` or beyond ``DEAD_LETTER_MAX`` (no statement when both are None);
        return the larger count."""
        now, batch = clock.now(), conf.settings.PRUNE_BATCH
        deleted = self._jobs().prune(now, limit=batch)
        if deleted:
            logger.debug("pruned %d finished jobs past their result_ttl", deleted)
            batches = self._jobs().prune_batches(limit=batch)  # they may go with their jobs
            if batches:
                logger.debug("pruned %d batches whose jobs were all pruned", batches)
        ttl, keep = conf.settings.DEAD_LETTER_TTL, conf.settings.DEAD_LETTER_MAX
        if ttl is None and keep is None:
            return deleted
        letters = DeadLetter.objects.using(self.using).prune(now, ttl=ttl, keep=keep, limit=batch)
        if letters:
            logger.info("pruned %d dead letters (DEAD_LETTER_TTL, DEAD_LETTER_MAX)", letters)
        return max(deleted, letters)

    def prune_limit_starts(self) -> int:
        """Delete one batch (``PRUNE_BATCH``) of rate-limit starts too old to count for any
        key (older than :data:`LONGEST_RATE_PERIOD`); return how many."""
        before = clock.now() - timedelta(seconds=LONGEST_RATE_PERIOD)
        deleted = self._jobs().prune_limit_starts(before, limit=conf.settings.PRUNE_BATCH)
        if deleted:
            logger.debug("pruned %d rate-limit starts older than any window", deleted)
        return deleted
