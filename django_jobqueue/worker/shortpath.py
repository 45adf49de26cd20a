"""One commit per short job (PostgreSQL): claim, run and complete a batch in one transaction.

A job that finishes within a few milliseconds of its claim costs, on the usual path, a
committed claim and a committed completion, each a statement of its own when jobs trickle
in one by one. On the short path the worker's main thread opens one transaction on its own
connection, claims a batch in it, runs the batch's short jobs on its job threads, waits for
them (at most :data:`WINDOW` times ``SHORT_JOB_SECONDS``), writes their completions in one
statement, and commits once: claim and completion become visible together.

How a job's duration is judged before it is known: by the recent runs of its name in this
process (a moving average, :class:`Durations`). A name is short after
:data:`MIN_RUNS` runs that averaged at most ``JOBQUEUE["SHORT_JOB_SECONDS"]``; a new
process, and a name it has not seen yet, takes the lease path. In the window only jobs of
short names start, and only plain ones (sync, no time limit, not ``atomic``); the others
wait in the buffer and start after the commit, under their lease, as today.

A "short" job that turns out long: no transaction is committed in halves. The window ends
at its bound whatever runs: the transaction commits the batch's claims (each with its
lease, set by the claim) and the completions written so far; a job still running simply
goes on under the lease its claim set, and its outcome is written later as on the usual
path. So a row is locked at most for the window (other workers skip locked rows: ``FOR
UPDATE SKIP LOCKED``), and the name's average learns that it is long.

What the transaction changes, and why each is sound:

* A worker that dies in the window leaves nothing: claims and completions roll back, the
  jobs are queued again with their attempt unused and run again (at least once). A job
  that kills its process in its first milliseconds is not run on the short path by a new
  process (no history), so its attempts are still counted and it reaches a dead letter.
* While the window is open, the claimed rows look queued to other sessions (the claim is
  not committed) and are locked: other workers' claims skip them, the group check of a
  later job of the same group still sees them (a group keeps its order), and a cancel
  request waits for the commit (milliseconds).
* Notifications and the ``job_started``, ``job_finished`` and ``job_dead_lettered`` signals
  are sent after the commit, never before (:meth:`.Writer.after_commit`).
* A window that fails rolls back: its claims are undone (the jobs are queued again with the
  same attempt number), those of a claim statement that failed included, so the claims it
  had not started leave the buffer, and the outcomes of the runs it started are dropped,
  never written (a write fenced on that attempt could land on the next run's claim, which
  has the same fence: the writer tells them apart by :attr:`.ClaimedJob.claim`). A lost
  connection is handled by the loop as always; a write the database refuses (a result it
  cannot store) suspends the short path for :data:`SUSPEND_SECONDS`, so the usual path,
  which records such a refusal as the attempt's failure, runs the jobs again. Outcomes of
  jobs started before the window that were written in it go back to the writer, written
  after it.

SQLite keeps the usual path: its one write lock would be held while user code runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError, connections

from .. import conf
from ..base import ClaimedJob
from ..registry import registry
from .claiming import Claimer
from .outcomes import describe
from .writer import Writer

logger = logging.getLogger("django_jobqueue.worker")

#: Runs of a name before its average may put it on the short path.
MIN_RUNS = 3
#: The longest a window keeps its transaction (and the claimed rows' locks) open, in
#: multiples of ``SHORT_JOB_SECONDS`` (2 ms by default: a 10 ms window).
WINDOW = 5
#: How long a window that failed on a write turns the short path off, seconds.
SUSPEND_SECONDS = 30.0


class Durations:
    """A moving average of the duration of each job name's runs in this process."""

    def __init__(self) -> None:
        self.average: dict[str, float] = {}
        self.runs: dict[str, int] = {}

    def record(self, name: str, duration: float) -> None:
        previous = self.average.get(name)
        self.average[name] = duration if previous is None else 0.8 * previous + 0.2 * duration
        self.runs[name] = self.runs.get(name, 0) + 1

    def short(self, name: str, bound: float) -> bool:
        return self.runs.get(name, 0) >= MIN_RUNS and self.average[name] <= bound


class ShortPath:
    """Runs the claim passes of a worker whose recent jobs were short (see the module).

    ``start(job)`` starts a job taken from the claimer's buffer; ``free()`` is how many job
    threads are free; ``sleep(seconds)`` waits for a job to report (the worker's wake-ups).
    """

    def __init__(
        self,
        using: str,
        claimer: Claimer,
        writer: Writer,
        *,
        start: Callable[[ClaimedJob], None],
        free: Callable[[], int],
        sleep: Callable[[float], None],
    ) -> None:
        self.using = using
        self.claimer = claimer
        self.writer = writer
        self.durations = Durations()
        self._start = start
        self._free = free
        self._sleep = sleep
        self.suspended_until = 0.0
        #: Windows committed, and the jobs started in them (for tests and debugging).
        self.windows = 0
        self.jobs = 0

    def bound(self) -> float:
        return conf.settings.SHORT_JOB_SECONDS

    def active(self, now: float) -> bool:
        """Take the short path now? PostgreSQL, enabled, not suspended, and the recent jobs
        (the claimer's moving average of all durations) short."""
        bound = self.bound()
        recent = self.claimer.avg_duration
        return (
            bound > 0
            and recent is not None
            and recent <= bound
            and now >= self.suspended_until
            and connections[self.using].vendor == "postgresql"
            and bool(self.durations.runs)
        )

    def eligible(self, name: str) -> bool:
        """Whether jobs named ``name`` may start in a window (those without a time limit)."""
        if name not in registry:
            return False
        definition = registry.get(name)
        if definition.is_async or definition.atomic:
            return False
        return self.durations.short(name, self.bound())

    def window(self, now: float) -> bool:
        """One claim pass in one transaction; return True if the claim found nothing."""
        wanted = self.claimer.wanted(now)
        if not wanted:
            return False
        before = {job.claim for job in self.claimer.buffer}
        started: list[ClaimedJob] = []
        try:
            # The writer records the window's endings in the transaction of its claims, and
            # announces them once it commits (worker/writer.py).
            with self.writer.in_transaction(started):
                nothing = self.claimer.claim_wanted(wanted, now)  # each statement buffers
                self._run(time.monotonic() + WINDOW * self.bound(), started)
                self.writer.flush()
        except BaseException as exc:
            # Rolled back: the claims were undone, those of a claim statement that failed
            # too. The writer drops the started runs' outcomes; the others never start.
            unstarted = [job for job in self.claimer.buffer if job.claim not in before]
            self.claimer.drop(job.id for job in unstarted)
            if not isinstance(exc, DatabaseError) or isinstance(
                exc, OperationalError | InterfaceError
            ):
                raise  # a lost connection (the loop reconnects), or a bug
            self.suspended_until = time.monotonic() + SUSPEND_SECONDS
            logger.warning(
                "worker: a short-path transaction failed (%s); rolled back, its %d jobs run "
                "again; the short path is off for %.0fs",
                describe(exc)[:300],
                len(started) + len(unstarted),
                SUSPEND_SECONDS,
            )
            return False
        self.windows += 1
        self.jobs += len(started)
        return nothing

    def _run(self, deadline: float, started: list[ClaimedJob]) -> None:
        """Start the buffered short jobs as threads free up (appending each to ``started``),
        until they have all reported or ``deadline`` passes."""
        names: dict[str, bool] = {}  # eligible(name), once per window

        def short(job: ClaimedJob) -> bool:
            if job.time_limit is not None:
                return False
            if job.name not in names:
                names[job.name] = self.eligible(job.name)
            return names[job.name]

        while True:
            buffer = self.claimer.buffer
            for job in [job for job in buffer if short(job)]:
                if self._free() <= 0:
                    break
                buffer.remove(job)
                started.append(job)
                self._start(job)
            left = deadline - time.monotonic()
            # A copy first (one C call, under the GIL): job threads append as they report.
            reported = {outcome.job.claim for outcome in list(self.writer.done)}
            waiting = any(job.claim not in reported for job in started)
            more = any(short(job) for job in self.claimer.buffer)
            if left <= 0 or not (waiting or more):
                return
            self._sleep(left)
