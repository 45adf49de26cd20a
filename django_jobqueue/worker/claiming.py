"""Claiming: how much to take (free slots plus a prefetch sized by recent job durations),
from which queues, and handing back what a worker will not run."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from django.utils import timezone

from .. import conf
from ..base import ClaimedJob
from ..models import Job
from ..querysets import JobQuerySet

#: A busy worker prefetches at most this many seconds of work (by recent job durations).
PREFETCH_SECONDS = 0.05


class Claimer:
    """The claimed jobs a worker holds but has not started (``buffer``) and when to claim.

    ``running()`` tells how many jobs the worker runs (or has finished but not written), so
    the claim knows how much room there is.
    """

    def __init__(
        self,
        using: str,
        *,
        queues: list[str] | None,
        worker: str,
        concurrency: int,
        running: Callable[[], int],
    ) -> None:
        self.using = using
        self.queues = queues
        self.worker = worker
        self.concurrency = concurrency
        self.running = running
        self.buffer: deque[ClaimedJob] = deque()
        #: A "work available" message came, or a group's job finished: claim at once.
        self.work_hint = True
        #: The last claim was full: more jobs may be ready.
        self.more_work = False
        #: When (``time.monotonic()``) the next claim is due without any hint.
        self.next_poll = 0.0
        self.known_queues: set[str] = set()
        #: The time of the last claim: jobs due only after it could not be claimed by it.
        self.claimed_at: datetime | None = None
        self.avg_duration: float | None = None

    def _jobs(self) -> JobQuerySet:
        return Job.objects.using(self.using)

    def free_slots(self) -> int:
        return self.concurrency - self.running() - len(self.buffer)

    def record_duration(self, duration: float) -> None:
        previous = self.avg_duration
        self.avg_duration = duration if previous is None else 0.8 * previous + 0.2 * duration

    def maybe_claim(self, now: float) -> bool:
        """Claim if there is room and a reason; return True if a claim found nothing.

        Room: the worker holds (runs or has buffered) fewer than ``concurrency`` plus the
        prefetch. Claims refill the buffer in batches (one statement for many short jobs),
        but only once it has drained to half the prefetch, so batches stay large.
        """
        prefetch = self.prefetch()
        held = self.running() + len(self.buffer)
        wanted = self.concurrency + prefetch - held
        if wanted <= 0 or (held >= self.concurrency and wanted < max(1, prefetch // 2)):
            # Full: no poll is due until a slot frees (a finished job wakes the loop).
            self.next_poll = max(self.next_poll, now + float(conf.get("POLL_INTERVAL")))
            return False
        if not (self.work_hint or self.more_work or now >= self.next_poll):
            return False
        self.work_hint = False
        self.next_poll = now + float(conf.get("POLL_INTERVAL"))
        claimed = self.claim(wanted)
        self.more_work = claimed >= wanted
        return not claimed

    def prefetch(self) -> int:
        """Jobs to claim beyond the free slots: about PREFETCH_SECONDS of work by the recent
        job durations, at most PREFETCH; none until a job has run (its length is unknown)."""
        if self.avg_duration is None:
            return 0
        ceiling = int(conf.get("PREFETCH"))
        return min(ceiling, int(PREFETCH_SECONDS / max(self.avg_duration, 1e-4)))

    def claim(self, wanted: int) -> int:
        """Claim up to ``wanted`` jobs into the buffer (each claim is committed, so each lands
        in the buffer at once and is renewed, run or released from there); return how many."""
        now = timezone.now()
        self.claimed_at = now
        lease_until = now + timedelta(seconds=float(conf.get("LEASE_SECONDS")))
        order: list[str | None] = [None] if self.queues is None else list(self.queues)
        random.shuffle(order)
        claimed = 0
        for name in order:
            if claimed >= wanted:
                break
            batch = self._jobs().claim(
                queue=name,
                limit=wanted - claimed,
                worker=self.worker,
                now=now,
                lease_until=lease_until,
            )
            self.buffer.extend(batch)
            claimed += len(batch)
            # Replaced, never mutated: the hub's thread reads it (listen_queues).
            self.known_queues = self.known_queues | {job.queue for job in batch}
            if any(job.group is not None for job in batch):
                self._drop_overtaking(batch)
        return claimed

    def _drop_overtaking(self, batch: list[ClaimedJob]) -> None:
        """Hand back grouped jobs that overtook an earlier job of their group.

        On PostgreSQL a job id is drawn when the row is inserted but becomes visible when it
        commits, so two claims running at once can each take a job of one group. Checked
        again with a fresh snapshot, after the claim committed, the later job is released
        before it starts: the group still runs one job at a time, in order.
        """
        overtaking = self._jobs().overtaking([job.fence for job in batch if job.group is not None])
        if overtaking:
            self._jobs().release([job.fence for job in self.buffer if job.id in overtaking])
            self.drop(overtaking)

    def drop(self, ids: Iterable[int]) -> None:
        """Forget buffered jobs ``ids`` (released, or their lease was lost)."""
        gone = set(ids)
        self.buffer = deque(job for job in self.buffer if job.id not in gone)

    def release_all(self) -> None:
        """Give prefetched, never-started jobs back to the queue (their attempt is undone)."""
        if not self.buffer:
            return
        self._jobs().release([job.fence for job in self.buffer])
        self.buffer.clear()

    def listen_queues(self, default: str, registered: Iterable[str]) -> list[str]:
        """The queues whose "work available" messages concern this worker."""
        if self.queues is not None:
            return self.queues
        return sorted({default, *self.known_queues, *registered})
