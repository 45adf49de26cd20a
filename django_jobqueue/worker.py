"""The worker: claim, run, renew leases, retry with backoff, dead-letter, stop cleanly.

One main thread owns the worker's database connection and does every queue write: claims,
completions (batched: whatever finished while it was busy goes in one statement), lease
renewals, retries, dead letters and reaping of expired leases. Sync jobs run on a pool of
``concurrency`` threads, async jobs on one event loop thread. When the database goes away the
main thread keeps the outcomes it has not written, reconnects with backoff and writes them
later; fencing on ``(id, attempts)`` makes a late write of a run that lost its lease a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from asgiref.sync import sync_to_async
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from . import conf, signals
from .exceptions import JobNotRegistered
from .models import DeadLetter, Job, JobResult
from .notifications import IdleFlag, hub, run_loop
from .querysets import ClaimedJob
from .registry import registry
from .serialization import check_json

logger = logging.getLogger("django_jobqueue")

REAP_BATCH = 100
PRUNE_BATCH = 1000
PRUNE_EVERY = 60.0
#: A busy worker prefetches at most this many seconds of work (by recent job durations).
PREFETCH_SECONDS = 0.05


@dataclass(slots=True, eq=False)
class Outcome:
    job: ClaimedJob
    ok: bool
    duration: float
    result: Any = None
    error: str = ""
    traceback: str = ""


@dataclass
class _Timers:
    poll: float = 0.0
    heartbeat: float = 0.0
    reap: float = 0.0
    prune: float = 0.0


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, with jitter."""
    base = float(conf.get("RETRY_BACKOFF"))
    ceiling = float(conf.get("RETRY_BACKOFF_MAX"))
    delay = min(ceiling, base * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    """Run jobs from ``queues`` (``None``: every queue) with ``concurrency`` at a time.

    ``burst``: exit once nothing is ready to run and nothing is running.
    """

    def __init__(
        self,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 1,
        burst: bool = False,
        name: str | None = None,
    ) -> None:
        self.queues = list(dict.fromkeys(queues)) if queues else None
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.using = router.db_for_write(Job)
        self._running: dict[int, ClaimedJob] = {}
        self._buffer: deque[ClaimedJob] = deque()
        self._done: deque[Outcome] = deque()
        # SimpleQueue.put is reentrant, so the signal handler (which runs on the main thread,
        # between any two bytecodes) can wake the loop; an Event's lock could deadlock there.
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._work_hint = True
        self._more_work = False
        self._stopping = False
        self._stop_count = 0
        self._known_queues: set[str] = set()
        self._avg_duration: float | None = None
        self._idle = IdleFlag()
        self._pool: ThreadPoolExecutor | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_thread = threading.Thread()
        self._db_failures = 0
        self._prepared: object = None
        self.processed = 0

    # -- public ---------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with ``burst``, until idle); return the exit code."""
        previous = self._install_signals()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="django-jobqueue-job")
        notifier = hub()
        notifier.listen_for_work(self._listen_queues, self._on_work, self._idle)
        logger.info(
            "worker started name=%s queues=%s concurrency=%d notifications=%s",
            self.name,
            ",".join(self.queues) if self.queues else "*",
            self.concurrency,
            notifier.describe(),
        )
        try:
            self._loop()
        finally:
            self._pool.shutdown(wait=True)
            self._flush_until_written()
            if self._async_loop is not None:
                self._async_loop.call_soon_threadsafe(self._async_loop.stop)
                self._async_thread.join(timeout=5.0)
            self._restore_signals(previous)
            connection = connections[self.using]
            if not connection.in_atomic_block:  # a test may run the worker inside its transaction
                connection.close()
            logger.info("worker stopped name=%s processed=%d", self.name, self.processed)
        return 0

    def stop(self) -> None:
        """Finish the running jobs, hand back prefetched ones, then return from :meth:`run`."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        self._wakeups.put(None)

    def _sleep(self, seconds: float) -> None:
        """Wait until woken or ``seconds`` pass; forget the wake-ups that came meanwhile."""
        try:
            self._wakeups.get(timeout=seconds)
        except queue.Empty:
            return
        while True:
            try:
                self._wakeups.get_nowait()
            except queue.Empty:
                return

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        timers = _Timers()
        while True:
            now = time.monotonic()
            try:
                self._prepare_connection()
                if not self._stopping:
                    self._start_buffered()  # refill finished slots before the writes
                self._flush()
                if self._stopping:
                    self._release_buffer()
                    if not self._running and not self._done:
                        return
                    self._heartbeat_if_due(now, timers)
                else:
                    self._periodic(now, timers)
                    claimed_nothing = self._maybe_claim(now, timers)
                    self._start_buffered()
                    if (
                        self.burst
                        and claimed_nothing
                        and not self._running
                        and not self._buffer
                        and not self._done
                    ):
                        return
                self._db_failures = 0
            except (OperationalError, InterfaceError) as exc:
                self._database_lost(exc)
                continue
            except Exception:
                # A bug or a database error that is not a lost connection (a migration not
                # applied, a constraint): never die with jobs in hand; log, back off, go on.
                logger.exception("worker name=%s: unexpected error, retrying", self.name)
                self._sleep(min(5.0, 0.1 * 2 ** min(self._db_failures, 6)))
                self._db_failures += 1
                continue
            free = self._free_slots() > 0 and not self._stopping
            self._idle.set(free)
            # More to do at once: outcomes to write, or a slot free while jobs may wait (the
            # last claim was full, or a wake-up came while every slot was taken).
            if self._done or (free and (self._more_work or self._work_hint)):
                continue
            self._sleep(self._sleep_for(timers))

    def _prepare_connection(self) -> None:
        """Once per database connection of the worker's main thread (PostgreSQL):

        * ``synchronous_commit = off`` unless ``WORKER_SYNCHRONOUS_COMMIT``: the worker's own
          writes (claims, completions, leases) skip the wait for the disk. A database crash
          can forget the last fraction of a second of them, which at-least-once absorbs: a
          forgotten claim or completion runs the job again. Enqueues stay durable.
        * ``ANALYZE`` of a job table that was never analyzed (a fresh install, before
          autovacuum's first pass), whose plans would sort every queued job per claim.
        """
        connection = connections[self.using]
        if connection.vendor != "postgresql" or connection.in_atomic_block:
            return
        connection.ensure_connection()
        raw = connection.connection
        if raw is self._prepared:
            return
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            if not conf.get("WORKER_SYNCHRONOUS_COMMIT"):
                cursor.execute("SET synchronous_commit TO off")
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
            row = cursor.fetchone()
            if row is not None and row[0] < 0:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")
        self._prepared = raw

    def _sleep_for(self, timers: _Timers) -> float:
        now = time.monotonic()
        if self._stopping:
            due = timers.heartbeat - now
        else:
            due = min(timers.poll, timers.heartbeat, timers.reap) - now
        return max(0.0, min(due, float(conf.get("POLL_INTERVAL"))))

    def _free_slots(self) -> int:
        return self.concurrency - len(self._running) - len(self._buffer)

    def _on_work(self) -> None:
        """A "work available" message (from the hub's thread): claim at the next chance.

        With no free slot the loop is not woken: a finished job wakes it, and it claims then
        because of the hint (a broadcast layer delivers wake-ups to busy workers too)."""
        self._work_hint = True
        if self._free_slots() > 0:
            logger.debug("worker name=%s woken by a work-available notification", self.name)
            self._wake()

    def _listen_queues(self) -> list[str]:
        if self.queues is not None:
            return self.queues
        known = {conf.get("DEFAULT_QUEUE"), *self._known_queues}
        known.update(job.queue for job in map(registry.get, registry.names()) if job.queue)
        return sorted(known)

    def _database_lost(self, exc: BaseException) -> None:
        self._db_failures += 1
        delay = min(5.0, 0.1 * 2 ** min(self._db_failures, 6))
        logger.warning(
            "database error in worker name=%s (%s); reconnecting in %.1fs", self.name, exc, delay
        )
        for connection in connections.all(initialized_only=True):
            connection.close()
        self._sleep(delay)

    # -- claiming --------------------------------------------------------------------------

    def _maybe_claim(self, now: float, timers: _Timers) -> bool:
        """Claim if there is room and a reason; return True if a claim found nothing.

        Room: the worker holds (runs or has buffered) fewer than ``concurrency`` plus the
        prefetch. Claims refill the buffer in batches (one statement for many short jobs),
        but only once it has drained to half the prefetch, so batches stay large.
        """
        prefetch = self._prefetch()
        held = len(self._running) + len(self._buffer)
        wanted = self.concurrency + prefetch - held
        if wanted <= 0 or (held >= self.concurrency and wanted < max(1, prefetch // 2)):
            # Full: no poll is due until a slot frees (a finished job wakes the loop).
            timers.poll = max(timers.poll, now + float(conf.get("POLL_INTERVAL")))
            return False
        if not (self._work_hint or self._more_work or now >= timers.poll):
            return False
        self._work_hint = False
        timers.poll = now + float(conf.get("POLL_INTERVAL"))
        claimed = self._claim(wanted)
        self._more_work = claimed >= wanted
        return not claimed

    def _prefetch(self) -> int:
        """Jobs to claim beyond the free slots: about PREFETCH_SECONDS of work by the recent
        job durations, at most PREFETCH; none until a job has run (its length is unknown)."""
        if self._avg_duration is None:
            return 0
        ceiling = int(conf.get("PREFETCH"))
        return min(ceiling, int(PREFETCH_SECONDS / max(self._avg_duration, 1e-4)))

    def _claim(self, wanted: int) -> int:
        """Claim up to ``wanted`` jobs into the buffer (each claim is committed, so each lands
        in the buffer at once and is renewed, run or released from there); return how many."""
        now = timezone.now()
        lease_until = now + timedelta(seconds=float(conf.get("LEASE_SECONDS")))
        jobs = Job.objects.using(self.using)
        order: list[str | None] = [None] if self.queues is None else list(self.queues)
        random.shuffle(order)
        claimed = 0
        for name in order:
            if claimed >= wanted:
                break
            batch = jobs.claim(
                queue=name,
                limit=wanted - claimed,
                worker=self.name,
                now=now,
                lease_until=lease_until,
            )
            self._buffer.extend(batch)
            claimed += len(batch)
            # Replaced, never mutated: the hub's thread reads it (_listen_queues).
            self._known_queues = self._known_queues | {job.queue for job in batch}
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
        grouped = [(job.id, job.attempts) for job in batch if job.group is not None]
        overtaking = Job.objects.using(self.using).overtaking(grouped)
        if overtaking:
            fenced = [(job.id, job.attempts) for job in self._buffer if job.id in overtaking]
            Job.objects.using(self.using).release(fenced)
            self._buffer = deque(job for job in self._buffer if job.id not in overtaking)

    def _release_buffer(self) -> None:
        """Give prefetched, never-started jobs back to the queue (their attempt is undone)."""
        if not self._buffer:
            return
        fenced = [(job.id, job.attempts) for job in self._buffer]
        Job.objects.using(self.using).release(fenced)
        self._buffer.clear()

    # -- running ---------------------------------------------------------------------------

    def _start_buffered(self) -> None:
        # Jobs whose outcome waits in _done are finished: their slot is free, although they
        # stay in _running (and keep their lease renewed) until the outcome is written.
        while self._buffer and len(self._running) - len(self._done) < self.concurrency:
            job = self._buffer[0]
            if job.name not in registry:  # deployed out of order: quarantine, go on
                self._dead_letter(job, describe(JobNotRegistered(job.name)), "")
                self._buffer.popleft()
                continue
            self._buffer.popleft()
            self._running[job.id] = job
            definition = registry.get(job.name)
            if signals.job_started.has_listeners():
                signals.send_robust(
                    signals.job_started, sender=Job, job_id=job.job_id, attempt=job.attempts
                )
            if definition.is_async:
                asyncio.run_coroutine_threadsafe(self._run_async(job), self._get_async_loop())
            else:
                assert self._pool is not None
                self._pool.submit(self._run_sync, job)

    def _get_async_loop(self) -> asyncio.AbstractEventLoop:
        if self._async_loop is None:
            loop = asyncio.new_event_loop()
            self._async_thread = threading.Thread(
                target=run_loop, args=(loop,), name="django-jobqueue-async-jobs", daemon=True
            )
            self._async_thread.start()
            self._async_loop = loop
        return self._async_loop

    def _run_sync(self, job: ClaimedJob) -> None:
        close_old_connections()
        started = time.monotonic()
        try:
            result = registry.get(job.name).func(*job.args, **job.kwargs)
            outcome = _succeeded(job, result, started)
        except BaseException as exc:  # a job's failure, whatever it is, is the job's outcome
            outcome = _failed(job, started, describe(exc))
        finally:
            close_old_connections()
        self._report(outcome)

    async def _run_async(self, job: ClaimedJob) -> None:
        # The ORM of async jobs runs on asgiref's one sync thread: drop its connection if it
        # broke or aged, as a sync job's thread does (channels' database_sync_to_async).
        await sync_to_async(close_old_connections)()
        started = time.monotonic()
        try:
            result = await registry.get(job.name).func(*job.args, **job.kwargs)
            outcome = _succeeded(job, result, started)
        except BaseException as exc:
            outcome = _failed(job, started, describe(exc))
        finally:
            await sync_to_async(close_old_connections)()
        self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        self._done.append(outcome)
        self._wake()

    # -- writing outcomes --------------------------------------------------------------------

    def _flush(self) -> None:
        """Write every outcome reported so far: completions in one statement per result_ttl.

        What was written is done with even if a later write fails; what was not stays for the
        next flush. An outcome the database refuses (not a lost connection) is written on its
        own, and a completion that cannot be stored fails its attempt instead.
        """
        if not self._done:
            return
        outcomes: list[Outcome] = []
        while self._done:
            outcomes.append(self._done.popleft())
        written: list[Outcome] = []
        try:
            try:
                self._write(outcomes, written)
            except (OperationalError, InterfaceError):
                raise
            except Exception:
                logger.exception("worker name=%s: writing outcomes failed", self.name)
                done = {id(o) for o in written}
                for outcome in outcomes:
                    if id(outcome) not in done:
                        self._write_alone(outcome, written)
        finally:
            done = {id(o) for o in written}
            self._done.extendleft(reversed([o for o in outcomes if id(o) not in done]))
            self._finished(written)

    def _write_alone(self, outcome: Outcome, written: list[Outcome]) -> None:
        try:
            self._write([outcome], written)
            return
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            if not outcome.ok:
                logger.exception(
                    "worker name=%s: cannot record job %s; it runs again after its lease",
                    self.name,
                    outcome.job.job_id,
                )
                written.append(outcome)  # nothing more to try: the lease decides
                return
            failure = _failed(
                outcome.job,
                time.monotonic() - outcome.duration,
                f"The job's result could not be stored: {describe(exc)}",
            )
        self._write_alone(failure, written)
        for index, item in enumerate(written):
            if item is failure:
                written[index] = outcome  # the run is accounted for under its own outcome

    def _finished(self, written: list[Outcome]) -> None:
        for outcome in written:
            self._running.pop(outcome.job.id, None)
            if outcome.job.group is not None:
                self._work_hint = True  # the group's next job may be ready now
            duration = outcome.duration
            previous = self._avg_duration
            self._avg_duration = duration if previous is None else 0.8 * previous + 0.2 * duration
        self.processed += len(written)

    def _flush_until_written(self) -> None:
        for _ in range(50):
            try:
                self._flush()
                return
            except (OperationalError, InterfaceError) as exc:
                self._database_lost(exc)
        logger.error("worker name=%s could not write %d outcomes", self.name, len(self._done))

    def _write(self, outcomes: list[Outcome], written: list[Outcome]) -> None:
        """Write ``outcomes``, appending each to ``written`` once its statement committed."""
        now = timezone.now()
        by_ttl: dict[int, list[Outcome]] = {}
        for outcome in outcomes:
            if outcome.ok:
                by_ttl.setdefault(outcome.job.result_ttl, []).append(outcome)
        jobs = Job.objects.using(self.using)
        for ttl, done in by_ttl.items():
            fenced = [(o.job.id, o.job.attempts) for o in done]
            with_result = [o for o in done if o.result is not None]
            expires = now + timedelta(seconds=ttl)
            if with_result:
                results = {o.job.id: o.result for o in with_result}
                mine = jobs.complete_with_results(fenced, results, now=now, expires_at=expires)
            else:
                mine = jobs.complete(fenced, now=now, expires_at=expires)
            written.extend(done)
            for o in done:
                self._log(o, "completed" if o.job.id in mine else "discarded (lease lost)")
            self._after_write(done, [o.job.job_id for o in done if mine.get(o.job.id)])
        for outcome in outcomes:
            if outcome.ok:
                continue
            job = outcome.job
            if job.attempts >= job.max_attempts:
                notify = self._dead_letter(job, outcome.error, outcome.traceback, outcome=outcome)
                written.append(outcome)
                self._after_write([outcome], [job.job_id] if notify else [])
                continue
            delay = backoff(job.attempts)
            retried = jobs.retry(
                job.id, job.attempts, run_after=now + timedelta(seconds=delay), error=outcome.error
            )
            written.append(outcome)
            self._log(
                outcome, f"failed, retry in {delay:.1f}s" if retried else "discarded (lease lost)"
            )
            self._after_write([outcome], [])

    def _after_write(self, outcomes: list[Outcome], notify: list[str]) -> None:
        if notify:
            hub().job_finished(notify)
        if signals.job_finished.has_listeners():
            for outcome in outcomes:
                signals.send_robust(
                    signals.job_finished,
                    sender=Job,
                    job_id=outcome.job.job_id,
                    ok=outcome.ok,
                    error=outcome.error,
                )

    def _log(self, outcome: Outcome, result: str) -> None:
        job = outcome.job
        logger.info(
            "job id=%s name=%s queue=%s attempt=%d/%d duration=%.4fs outcome=%s%s",
            job.job_id,
            job.name,
            job.queue,
            job.attempts,
            job.max_attempts,
            outcome.duration,
            result,
            f" error={outcome.error!r}" if outcome.error else "",
        )

    def _dead_letter(
        self,
        job: ClaimedJob,
        error: str,
        trace: str,
        *,
        outcome: Outcome | None = None,
        lease_expired_before: datetime | None = None,
    ) -> bool:
        """Fail the run ``job`` for good: status failed, its result row, a DeadLetter row."""
        notify = dead_letter(
            job, error, trace, using=self.using, lease_expired_before=lease_expired_before
        )
        if notify is None:
            if outcome is not None:
                self._log(outcome, "discarded (lease lost)")
            return False
        self._log(outcome or Outcome(job, False, 0.0, error=error), "dead-lettered")
        if notify and outcome is None:
            hub().job_finished([job.job_id])
        self._running.pop(job.id, None)
        return notify

    # -- periodic: leases, reaping, pruning ---------------------------------------------------

    def _periodic(self, now: float, timers: _Timers) -> None:
        self._heartbeat_if_due(now, timers)
        if now >= timers.reap:
            timers.reap = now + max(0.5, min(5.0, float(conf.get("LEASE_SECONDS")) / 2))
            self._reap()
        if now >= timers.prune:
            timers.prune = now + PRUNE_EVERY
            self._prune()

    def _heartbeat_if_due(self, now: float, timers: _Timers) -> None:
        if now >= timers.heartbeat:
            timers.heartbeat = now + conf.heartbeat_interval()
            self._heartbeat()

    def _heartbeat(self) -> None:
        held = [*self._running.values(), *self._buffer]
        if not held:
            return
        lease_until = timezone.now() + timedelta(seconds=float(conf.get("LEASE_SECONDS")))
        ours = Job.objects.using(self.using).renew_leases(
            [(job.id, job.attempts) for job in held], lease_until
        )
        lost = [job for job in held if job.id not in ours]
        for job in lost:
            logger.warning(
                "lease lost id=%s name=%s attempt=%d: another worker may run it; this run's "
                "outcome will be discarded",
                job.job_id,
                job.name,
                job.attempts,
            )
        if lost:
            lost_ids = {job.id for job in lost}
            self._buffer = deque(job for job in self._buffer if job.id not in lost_ids)

    def _reap(self) -> None:
        """Requeue (or dead-letter) running jobs whose worker stopped renewing their lease."""
        now = timezone.now()
        expired = list(
            Job.objects.using(self.using)
            .expired_leases(now)
            .order_by("lease_expires_at")[:REAP_BATCH]
        )
        for row in expired:
            job = _claimed_from(row)
            error = (
                f"Lease expired: the worker running attempt {job.attempts} ({row.worker or '?'}) "
                "stopped or lost its database connection."
            )
            if job.attempts >= job.max_attempts:
                self._dead_letter(job, error, "", lease_expired_before=now)
            else:
                requeued = (
                    Job.objects.using(self.using)
                    .filter(
                        id=job.id, attempts=job.attempts, status="running", lease_expires_at__lt=now
                    )
                    .update(
                        status="queued",
                        run_after=now + timedelta(seconds=backoff(job.attempts)),
                        lease_expires_at=None,
                        last_error=error,
                        worker="",
                    )
                )
                if requeued:
                    logger.warning(
                        "lease expired id=%s name=%s attempt=%d/%d: requeued",
                        job.job_id,
                        job.name,
                        job.attempts,
                        job.max_attempts,
                    )

    def _prune(self) -> None:
        now = timezone.now()
        jobs = Job.objects.using(self.using)
        ids = list(jobs.expired_results(now).values_list("id", flat=True)[:PRUNE_BATCH])
        if ids:
            deleted, _ = jobs.filter(id__in=ids).expired_results(now).delete()
            logger.debug("pruned %d expired results", deleted)

    # -- signals -----------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_count += 1
        if self._stop_count == 1:
            logger.info(
                "worker name=%s got %s: finishing %d running job(s), then exiting",
                self.name,
                signal.Signals(signum).name,
                len(self._running),
            )
            self.stop()
        else:
            logger.warning(
                "worker name=%s got %s again: exiting now; unfinished jobs run again after "
                "their lease",
                self.name,
                signal.Signals(signum).name,
            )
            os._exit(1)


def _failed(job: ClaimedJob, started: float, error: str) -> Outcome:
    """The outcome of an attempt that raised; call it from the ``except`` block."""
    trace = traceback.format_exc()
    return Outcome(
        job,
        False,
        time.monotonic() - started,
        error=error.replace("\x00", "\\x00"),  # text columns cannot hold NUL
        traceback=trace.replace("\x00", "\\x00"),
    )


def _succeeded(job: ClaimedJob, result: Any, started: float) -> Outcome:
    try:
        check_json(result, "result")
    except Exception as exc:
        return _failed(job, started, f"The job returned a value that cannot be stored: {exc}")
    return Outcome(job, True, time.monotonic() - started, result=result)


def _claimed_from(row: Job) -> ClaimedJob:
    return ClaimedJob(
        id=row.pk,
        job_id=row.job_id,
        name=row.name,
        queue=row.queue,
        args=row.args,
        kwargs=row.kwargs,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        result_ttl=row.result_ttl,
        priority=row.priority,
        group=row.group,
    )


def dead_letter(
    job: ClaimedJob,
    error: str,
    trace: str,
    *,
    using: str,
    lease_expired_before: datetime | None = None,
) -> bool | None:
    """Fail the run ``(job.id, job.attempts)`` for good, in one transaction.

    Returns None if the run is no longer ours (fenced), else whether someone waits for it.
    """
    now = timezone.now()
    with transaction.atomic(using=using):
        # Write first: on SQLite a transaction that reads before it writes can fail at once
        # with "database is locked" when another connection wrote in between.
        rows = Job.objects.using(using).filter(id=job.id, attempts=job.attempts, status="running")
        if lease_expired_before is not None:
            rows = rows.filter(lease_expires_at__lt=lease_expired_before)
        if not rows.update(
            status="failed",
            finished_at=now,
            expires_at=now + timedelta(seconds=job.result_ttl),
            lease_expires_at=None,
            last_error=error,
        ):
            return None
        row = Job.objects.using(using).get(pk=job.id)
        JobResult.objects.using(using).update_or_create(
            job=row, defaults={"error": error, "traceback": trace, "result": None}
        )
        letter = DeadLetter.objects.using(using).create(
            job_id=row.job_id,
            name=row.name,
            queue=row.queue,
            args=row.args,
            kwargs=row.kwargs,
            priority=row.priority,
            group=row.group,
            max_attempts=row.max_attempts,
            result_ttl=row.result_ttl,
            attempts=row.attempts,
            error=error,
            traceback=trace,
            enqueued_at=row.enqueued_at,
            failed_at=now,
        )
    if signals.job_dead_lettered.has_listeners():
        signals.send_robust(signals.job_dead_lettered, sender=DeadLetter, dead_letter=letter)
    return row.notify
