"""The worker's main loop: the composition root of the pieces of :mod:`django_jobqueue.worker`.

One main thread owns the worker's database connection and does every queue write: claims,
completions (batched: whatever finished while it was busy goes in one statement), lease
renewals, retries, dead letters and reaping of expired leases. Sync jobs run on a pool of
``concurrency`` threads, async jobs on one event loop thread. When the database goes away the
main thread keeps the outcomes it has not written, reconnects with backoff and writes them
later; fencing on ``(id, attempts)`` makes a late write of a run that lost its lease a no-op.

The pieces never import this module: each gets the callbacks it needs.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable

from django.db import InterfaceError, OperationalError

from .. import conf, periodic
from ..base import ClaimedJob
from ..notifications import IdleFlag, hub
from ..registry import registry
from ..routers import main_database, serving
from .claiming import Claimer
from .connection import Connection
from .outcomes import Outcome
from .presence import Presence
from .recycling import Recycling
from .runner import Runner
from .shortpath import ShortPath
from .shutdown import StopSignals
from .steps import (
    abandoned_too_many,
    burst_is_over,
    cancel_held,
    release_paused,
    write_progress,
)
from .timelimits import EXIT_ABANDONED_THREADS
from .unknown import UnknownNames
from .upkeep import Upkeep
from .writer import Writer

logger = logging.getLogger("django_jobqueue.worker")


class Worker:
    """Run jobs from ``queues`` (``None``: every queue) with ``concurrency`` at a time
    (``runjobworker`` passes :func:`~.claiming.default_concurrency` unless told).

    ``schedule``: take part in enqueueing periodic jobs (``runjobworker --no-schedule``
    passes False); a schedule that cannot work raises ``ImproperlyConfigured`` here.

    ``burst``: exit once nothing is ready to run and nothing is running, and (unless
    ``wait_for_retries`` is false) no job of its queues waits out a retry's backoff.

    :meth:`run` returns 0 (also past ``recycling``'s limits, :mod:`.recycling`), or
    :data:`~.timelimits.EXIT_ABANDONED_THREADS` when more than ``concurrency`` threads of
    jobs past their time limit would not end (see :mod:`.timelimits`).

    ``processed`` counts the outcomes written; ``passes`` counts the passes of the main loop
    (an idle worker makes about one per ``POLL_INTERVAL``): a measure for tests and debugging.
    """

    def __init__(
        self,
        queues: Iterable[str] | None = None,
        *,
        concurrency: int = 1,
        burst: bool = False,
        wait_for_retries: bool = True,
        name: str | None = None,
        schedule: bool = True,
        recycling: Recycling | None = None,
        database: str | None = None,
    ) -> None:
        self.queues = list(dict.fromkeys(queues)) if queues else None
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.wait_for_retries = wait_for_retries
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.using = database or serving(self.queues)
        self._running: dict[int, ClaimedJob] = {}
        # SimpleQueue.put is reentrant, so the signal handler (which runs on the main thread,
        # between any two bytecodes) can wake the loop; an Event's lock could deadlock there.
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopping = False
        self._idle = IdleFlag()
        self.processed = 0
        self.passes = 0
        self.exit_code = 0
        self._recycling = recycling or Recycling()
        self._connection = Connection(self.using, self.name, lambda s: self._sleep(s))
        self._claimer = Claimer(
            self.using,
            queues=self.queues,
            worker=self.name,
            concurrency=self.concurrency,
            running=lambda: len(self._running),
            running_ids=lambda: self._running.keys(),
            skip_names=lambda: self._unknown.skipped(),
        )
        self._runner = Runner(
            self.concurrency, self._report, name=self.name, wake=self._wake, using=self.using
        )
        self._writer = Writer(
            self.using,
            self.name,
            finished=self._finished,
            forget=self._forget,
            between=lambda: self._upkeep.heartbeat_if_due(time.monotonic()),
        )
        self._runner.after_commit = self._writer.after_commit  # job_started after the claim
        self._unknown = UnknownNames(self.using, self.name, self._writer)
        self._short = ShortPath(
            self.using,
            self._claimer,
            self._writer,
            start=self._start,
            free=lambda: self.concurrency - len(self._running) + len(self._done),
            sleep=self._sleep,
        )
        # Schedules are checked here: a bad one refuses to start (ImproperlyConfigured).
        # Schedules live on the main alias: only a worker there takes part in them.
        self.schedule = schedule and self.using == main_database()
        schedules = periodic.configured() if self.schedule else []
        self.scheduler = periodic.Scheduler(schedules, self.using) if schedules else None
        self._presence = Presence(
            self.using,
            self.name,
            queues=self.queues,
            concurrency=self.concurrency,
            scheduling=schedule,
            counts=lambda: (len(self._running), self.processed),
        )
        self._upkeep = Upkeep(
            self.using,
            held=lambda: [*self._running.values(), *self._claimer.buffer],
            lost=self._claimer.drop,
            dead_letter=self._writer.endings.dead_letter,
            cancel=self._cancel,
            beat=self._presence.beat,
            schedule=self.scheduler.run if self.scheduler is not None else None,
        )
        self._signals = StopSignals(self.name, self.stop, lambda: len(self._running))

    # -- public ---------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped (or, with ``burst``, until idle); return the exit code."""
        self._signals.install()
        self._runner.open()
        notifier = hub()
        notifier.listen_for_work(self._listen_queues, self._on_work, self._idle)
        notifier.listen_for_cancels(self.name, self._on_cancel_message)
        logger.info(
            "worker started name=%s queues=%s concurrency=%d notifications=%s schedules=%s jobs=%s",
            self.name,
            ",".join(self.queues) if self.queues else "*",
            self.concurrency,
            notifier.describe(),
            _schedules_named(self.schedule, self.scheduler),
            # The job names it can run: one whose module was never imported shows up missing.
            ",".join(sorted(registry.names())) or "(none registered)",
        )
        try:
            self._loop()
        finally:
            self._runner.close()
            self._writer.flush_until_written(self._connection.lost)
            self._runner.stop_async()
            self._claimer.close()
            self._signals.restore()
            self._presence.leave()
            self._connection.close()
            logger.info("worker stopped name=%s processed=%d", self.name, self.processed)
        return self.exit_code

    def stop(self) -> None:
        """Finish the running jobs, hand back prefetched ones, then return from :meth:`run`."""
        self._stopping = True
        self._wake()

    @property
    def _done(self) -> deque[Outcome]:
        """The outcomes reported and not yet written (the writer's)."""
        return self._writer.done

    def _flush(self) -> None:
        self._writer.flush()

    # -- the loop --------------------------------------------------------------------------

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

    def _loop(self) -> None:
        claimer, upkeep, connection = self._claimer, self._upkeep, self._connection
        while True:
            self.passes += 1
            now = time.monotonic()
            try:
                if now >= self._runner.limits.due:
                    self._enforce_time_limits(now)
                connection.prepare()
                if not self._stopping:
                    release_paused(claimer, now)  # jobs of a queue paused since their claim
                    self._start_buffered()  # refill finished slots before the writes
                write_progress(self._runner, self.using, now)
                self._writer.flush()
                if self._stopping:
                    claimer.release_all()
                    if not self._running and not self._done:
                        return
                    upkeep.heartbeat_if_due(now)
                else:
                    upkeep.periodic(now)
                    if self._short.active(now):
                        claimed_nothing = self._short.window(now)  # worker/shortpath.py
                    else:
                        claimed_nothing = claimer.maybe_claim(now)
                    self._start_buffered()
                    if claimed_nothing and self._burst_is_over():
                        return
                connection.healthy()
            except (OperationalError, InterfaceError) as exc:
                connection.lost(exc)
                continue
            except Exception:
                # A bug or a database error that is not a lost connection (a migration not
                # applied, a constraint): never die with jobs in hand; log, back off, go on.
                logger.exception("worker name=%s: unexpected error, retrying", self.name)
                connection.failed()
                continue
            free = self._free_slots() > 0 and not self._stopping
            self._idle.set(free)
            # More to do at once: outcomes to write, or a slot free while jobs may wait (the
            # last claim was full, or a wake-up came while every slot was taken).
            if self._done or (free and (claimer.more_work or claimer.work_hint)):
                continue
            self._sleep(self._sleep_for())

    def _enforce_time_limits(self, now: float) -> None:
        """Fail the attempts past their time limit; past too many abandoned threads, stop
        claiming, drain, and exit with a code that asks for a fresh process."""
        if abandoned_too_many(self._runner, self.name, now, exiting=bool(self.exit_code)):
            self.exit_code = EXIT_ABANDONED_THREADS
            self.stop()

    def _burst_is_over(self) -> bool:
        """In burst mode, after a claim found nothing: True if nothing is left to do."""
        if not self.burst or self._running or self._claimer.buffer or self._done:
            return False
        return burst_is_over(self._claimer, self.using, self.queues, self.wait_for_retries)

    def _sleep_for(self) -> float:
        now = time.monotonic()
        due = self._upkeep.due(stopping=self._stopping)
        if not self._stopping:
            due = min(due, self._claimer.next_poll)
        progress = self._runner.progress_due(conf.settings.PROGRESS_INTERVAL)
        if progress is not None:
            due = min(due, progress)
        due = min(due, self._runner.limits.due)  # a deadline, or a thread to count as stuck
        return max(0.0, min(due - now, conf.settings.POLL_INTERVAL))

    def _free_slots(self) -> int:
        return self._claimer.free_slots()

    def _on_work(self) -> None:
        """A "work available" message (from the hub's thread): claim at the next chance.

        With no free slot the loop is not woken: a finished job wakes it, and it claims then
        because of the hint (a broadcast layer delivers wake-ups to busy workers too)."""
        self._claimer.work_hint = True
        if self._free_slots() > 0:
            logger.debug("worker name=%s woken by a work-available notification", self.name)
            self._wake()

    def _on_cancel_message(self, job_id: str) -> None:
        """A "cancel" message (from the hub's thread): renew the leases now, which reads the
        cancel flags from the database (a forged message costs one renewal, no cancel)."""
        logger.debug("worker name=%s: cancel request for job %s by notification", self.name, job_id)
        self._upkeep.heartbeat_now()
        self._wake()

    def _listen_queues(self) -> list[str]:
        registered = (job.queue for job in map(registry.get, registry.names()) if job.queue)
        return self._claimer.listen_queues(conf.settings.DEFAULT_QUEUE, registered)

    # -- running and accounting --------------------------------------------------------------

    def _start_buffered(self) -> None:
        # Jobs whose outcome waits in _done are finished: their slot is free, although they
        # stay in _running (and keep their lease renewed) until the outcome is written.
        buffer = self._claimer.buffer
        unknown = [job for job in buffer if job.name not in registry]
        if unknown:  # deployed out of order: give them back (worker/unknown.py), go on
            self._unknown.handle(unknown)
            self._claimer.drop(job.id for job in unknown)
            buffer = self._claimer.buffer  # drop() replaced it
        while buffer and len(self._running) - len(self._done) < self.concurrency:
            self._start(buffer.popleft())

    def _start(self, job: ClaimedJob) -> None:
        self._running[job.id] = job
        self._runner.start(job)

    def _cancel(self, ids: set[int]) -> None:
        """Held jobs ``ids`` were asked to stop: tell the running ones; a buffered one never
        starts and ends ``cancelled``."""
        for job in cancel_held(ids, self._runner, self._claimer, self._running):
            self._writer.report(Outcome(job, False, 0.0, error="Cancelled", cancelled=True))

    def _report(self, outcome: Outcome) -> None:
        """From a job's thread: ``outcome`` is ready to be written."""
        self._writer.report(outcome)
        self._wake()

    def _finished(self, written: list[Outcome]) -> None:
        for outcome in written:
            if self._running.get(outcome.job.id, outcome.job).claim == outcome.job.claim:
                self._running.pop(outcome.job.id, None)  # not a later claim of the job
            if outcome.job.group is not None or outcome.job.id in self._claimer.limited:
                # The group's next job may be ready now, or the key's slot came back: claim
                # at once, not at the next poll (a short-path window consumed the wake-up).
                self._claimer.work_hint = True
            self._claimer.record_duration(outcome.duration)
            self._short.durations.record(outcome.job.name, outcome.duration)
        self.processed += len(written)
        self._recycling.check(self.name, self.processed, self.stop)

    def _forget(self, job_id: int) -> None:
        self._running.pop(job_id, None)


def _schedules_named(schedule: bool, scheduler: periodic.Scheduler | None) -> str:
    """The start-up line's ``schedules=``: ``off``, ``none`` or the schedules' names."""
    if not schedule:
        return "off"
    if scheduler is None:
        return "none"
    return ",".join(spec.name for spec in scheduler.specs)
