"""Claiming: how much to take (free slots plus a prefetch sized by recent job durations),
from which queues, and handing back what a worker will not run."""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta

from .. import clock, conf, limits
from ..base import ClaimedJob
from ..models import Job
from ..querysets import JobQuerySet
from ..routers import queue_database
from .limiter import Limiter, hold, make_limiter

logger = logging.getLogger("django_jobqueue.worker")

#: A busy worker prefetches at most this many seconds of work (by recent job durations).
PREFETCH_SECONDS = 0.05
#: Limit keys with queued jobs looked at per claim (the next claim goes on from there).
KEY_BATCH = 50
#: With no ``LIMITS`` configured, how often to look for jobs whose key lost its entry.
STRANDED_EVERY = 30.0
#: While it holds claimed jobs it has not started, how often a worker looks their queues up
#: among the paused ones (a pause must hold within 2 s: DESIGN.md).
PAUSE_CHECK_SECONDS = 1.0


def default_concurrency() -> int:
    """Job threads per worker when none is given: 4 per CPU this process may use, at least
    4 and at most 32 (8 on a 2-core machine).

    Jobs mostly wait (on the database, on HTTP): threads are cheap and a thread waiting on
    I/O leaves its CPU to the others. Four per core keeps a core busy with jobs that wait
    three quarters of their time; 32 bounds the database connections one worker may hold
    (``runjobworker`` warns when ``max_connections`` is short). Measured figures:
    ``docs/guide/performance.md``.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(4, min(32, 4 * cpus))


class Claimer:
    """The claimed jobs a worker holds but has not started (``buffer``) and when to claim.

    ``running()`` tells how many jobs the worker runs (or has finished but not written), so
    the claim knows how much room there is; ``running_ids()`` which ones (their limit slots
    are held until then).
    """

    def __init__(
        self,
        using: str,
        *,
        queues: list[str] | None,
        worker: str,
        concurrency: int,
        running: Callable[[], int],
        running_ids: Callable[[], Iterable[int]] = lambda: (),
        skip_names: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.using = using
        self.queues = queues
        self.worker = worker
        self.concurrency = concurrency
        self.running = running
        self.running_ids = running_ids
        #: The job names not to claim for now (names this worker does not know).
        self.skip_names = skip_names
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
        #: Holds the limits per key; built at the first claim that needs it.
        self.limiter: Limiter | None = None
        #: Where the next look at the limit keys starts (they are visited in turns).
        self.key_cursor = ""
        #: Keys found at their limit (or with nothing ready): not asked again before then.
        self.key_blocked: dict[str, float] = {}
        #: The jobs with a limit this worker holds (claimed, running, not yet written): pk -> key.
        self.limited: dict[int, str] = {}
        self.next_stranded = time.monotonic() + STRANDED_EVERY
        self.bad_limits = ""
        #: Keys with no entry in LIMITS that were warned about (once per key).
        self.unmatched: set[str] = set()
        #: Whether the last claim offered the free slots to jobs with a limit first.
        self.limited_first = False
        #: When the buffered jobs' queues are next looked up among the paused ones.
        self.next_pause_check = 0.0

    def jobs(self) -> JobQuerySet:
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
        wanted = self.wanted(now)
        return self.claim_wanted(wanted, now) if wanted else False

    def wanted(self, now: float) -> int:
        """How many jobs a claim would take now (0: no room, or no reason to claim)."""
        self.sync_limits(now)
        prefetch = self.prefetch()
        held = self.running() + len(self.buffer)
        wanted = self.concurrency + prefetch - held
        if wanted <= 0 or (held >= self.concurrency and wanted < max(1, prefetch // 2)):
            # Full: no poll is due until a slot frees (a finished job wakes the loop).
            self.next_poll = max(self.next_poll, now + conf.settings.POLL_INTERVAL)
            return 0
        if not (self.work_hint or self.more_work or now >= self.next_poll):
            return 0
        return wanted

    def claim_wanted(self, wanted: int, now: float) -> bool:
        """Claim ``wanted`` jobs (see :meth:`wanted`); return True if the claim found none."""
        self.work_hint = False
        self.next_poll = now + conf.settings.POLL_INTERVAL
        claimed = self.claim(wanted)
        self.more_work = claimed >= wanted
        return not claimed

    def prefetch(self) -> int:
        """Jobs to claim beyond the free slots: about PREFETCH_SECONDS of work by the recent
        job durations, at most PREFETCH; none until a job has run (its length is unknown)."""
        if self.avg_duration is None:
            return 0
        ceiling = conf.settings.PREFETCH
        return min(ceiling, int(PREFETCH_SECONDS / max(self.avg_duration, 1e-4)))

    def claim(self, wanted: int) -> int:
        """Claim up to ``wanted`` jobs into the buffer (each claim is committed, so each lands
        in the buffer at once and is renewed, run or released from there); return how many."""
        now = clock.now()
        self.claimed_at = now
        lease_until = now + timedelta(seconds=conf.settings.LEASE_SECONDS)
        order: list[str | None] = [None] if self.queues is None else list(self.queues)
        random.shuffle(order)
        claimed = 0
        skip = self.skip_names()
        # Jobs with a limit and jobs without share the free slots in turns: neither kind
        # goes first twice in a row, so neither can starve the other.
        limited = self._limits_configured() or time.monotonic() >= self.next_stranded
        self.limited_first = limited_first = limited and not self.limited_first
        if limited_first:
            claimed = self.claim_limited(wanted, now, lease_until)
        for name in order:
            if claimed >= wanted:
                break
            batch = self.jobs().claim(
                queue=name,
                limit=wanted - claimed,
                worker=self.worker,
                now=now,
                lease_until=lease_until,
                skip_names=skip,
            )
            self.buffer.extend(batch)
            claimed += len(batch)
            # Replaced, never mutated: the hub's thread reads it (listen_queues).
            self.known_queues = self.known_queues | {job.queue for job in batch}
            if any(job.group is not None for job in batch):
                self._drop_overtaking(batch)
        if limited and not limited_first and claimed < wanted:
            claimed += self.claim_limited(wanted - claimed, now, lease_until)
        return claimed

    def claim_limited(self, room: int, now: datetime, lease_until: datetime) -> int:
        """Claim up to ``room`` jobs that have a limit key, each key within its limits.

        A limited job holds its key's slot from its claim, so none is prefetched: the worker
        holds at most ``concurrency`` of them, and they go to the front of the buffer, to
        start at the next free thread, before any prefetched job. Keys are visited in turns
        from ``key_cursor``; a key at its limit is skipped until the next poll, or until a job
        of it ends here.
        """
        mono = time.monotonic()
        if not self._limits_configured():
            self.next_stranded = mono + STRANDED_EVERY
        room = min(room, self.concurrency - len(self.limited))
        if room <= 0:
            return 0
        if self.limiter is None:
            self.limiter = make_limiter(self.using, self.worker)
        keys = self.jobs().queued_limit_keys(after=self.key_cursor, count=KEY_BATCH)
        self.key_cursor = keys[-1] if len(keys) == KEY_BATCH else ""
        poll = conf.settings.POLL_INTERVAL
        if len(self.key_blocked) > 4 * KEY_BATCH:  # many keys (tenants): forget the past
            self.key_blocked = {k: t for k, t in self.key_blocked.items() if t > mono}
        claimed = 0
        for index, key in enumerate(keys):
            if claimed >= room:
                self.key_cursor = keys[index - 1]  # the next claim goes on from this key
                break
            if self.key_blocked.get(key, 0.0) > mono:
                continue
            batch: list[ClaimedJob] = []
            for name in [None] if self.queues is None else self.queues:
                batch += self._claim_key(key, name, room - claimed, now, lease_until)
                if len(batch) >= room - claimed:
                    break
            if len(batch) < room - claimed:
                self.key_blocked[key] = mono + poll
            self.buffer.extendleft(reversed(batch))
            self.limited.update((job.id, key) for job in batch)
            claimed += len(batch)
            self.known_queues = self.known_queues | {job.queue for job in batch}
            if any(job.group is not None for job in batch):
                self._drop_overtaking(batch)
        return claimed

    def _limits_configured(self) -> bool:
        """True if ``LIMITS`` has entries. A malformed setting (``manage.py check`` reports it
        as E013) is logged and treated as empty, once per change: jobs without a limit must
        keep running, and jobs with one wait."""
        try:
            configured = bool(limits.rules())
        except limits.LimitConfigError as exc:
            if self.bad_limits != str(exc):
                logger.error(
                    "worker name=%s: JOBQUEUE['LIMITS'] is malformed (%s): jobs with a limit "
                    "stay queued until it is fixed",
                    self.worker,
                    exc,
                )
            self.bad_limits = str(exc)
            self.next_stranded = time.monotonic() + STRANDED_EVERY
            return False
        self.bad_limits = ""
        return configured

    def _claim_key(
        self, key: str, queue: str | None, room: int, now: datetime, lease_until: datetime
    ) -> list[ClaimedJob]:
        holds = []
        for one in limits.split(key):  # several keys: each one's limits, held all at once
            rule = limits.rule_for(one)
            if rule is not None:
                holds.append(hold(one, rule))
            elif one not in self.unmatched:
                self.unmatched.add(one)
                logger.warning(
                    "worker name=%s: jobs with limit %r have no entry in JOBQUEUE['LIMITS'] "
                    "(removed since they were queued?): running them without that limit",
                    self.worker,
                    one,
                )
        if not holds:
            return self.jobs().claim(
                queue=queue,
                limit=room,
                worker=self.worker,
                now=now,
                lease_until=lease_until,
                limit_key=key,
                skip_names=self.skip_names(),
            )
        assert self.limiter is not None
        return self.limiter.claim(
            key, holds, queue=queue, limit=room, now=now, lease_until=lease_until
        )

    def sync_limits(self, now: float) -> None:
        """Tell the limiter which jobs this worker still holds; a key that got a slot back
        here (and every set of keys that has it) may be claimed again at once."""
        if self.limiter is None or not self.limited:
            return
        held = {job.id for job in self.buffer}
        held.update(self.running_ids())
        self.limiter.sync(held, now)
        freed = [self.limited.pop(pk) for pk in list(self.limited) if pk not in held]
        if freed:
            self.work_hint = True
            unblock(self.key_blocked, freed)

    def close(self) -> None:
        """The worker stops: free the limit slots it holds."""
        if self.limiter is not None:
            self.limiter.close()

    def _drop_overtaking(self, batch: list[ClaimedJob]) -> None:
        """Hand back grouped jobs that overtook an earlier job of their group.

        On PostgreSQL a job id is drawn when the row is inserted but becomes visible when it
        commits, so two claims running at once can each take a job of one group. Checked
        again with a fresh snapshot, after the claim committed, the later job is released
        before it starts: the group still runs one job at a time, in order.
        """
        overtaking = self.jobs().overtaking([job.fence for job in batch if job.group is not None])
        if overtaking:
            self.jobs().release([job.fence for job in self.buffer if job.id in overtaking])
            self.drop(overtaking)

    def drop(self, ids: Iterable[int]) -> None:
        """Forget buffered jobs ``ids`` (released, or their lease was lost)."""
        gone = set(ids)
        self.buffer = deque(job for job in self.buffer if job.id not in gone)

    def release_all(self) -> None:
        """Give prefetched, never-started jobs back to the queue (their attempt is undone)."""
        if self.buffer:
            self.jobs().release([job.fence for job in self.buffer])
            self.buffer.clear()
        self.sync_limits(time.monotonic())

    def listen_queues(self, default: str, registered: Iterable[str]) -> list[str]:
        """The queues whose "work available" messages concern this worker."""
        if self.queues is not None:
            return self.queues
        # Every queue on this worker's database, not those QUEUES puts on another: on a
        # queue-like layer a wake-up is popped by one receiver, which must be able to claim.
        found = {default, *self.known_queues, *registered}
        return sorted(name for name in found if queue_database(name) == self.using)


def unblock(blocked: dict[str, float], freed: list[str]) -> None:
    """Forget the blocks of every limit key (or set of keys) that shares a key with the
    ``freed`` ones (their stored forms): a slot of it came back."""
    keys = {key for stored in freed for key in limits.split(stored)}
    for stored in [stored for stored in blocked if keys.intersection(limits.split(stored))]:
        del blocked[stored]
