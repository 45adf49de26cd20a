"""Writing outcomes: batched, fenced completions, retries, dead letters, then notifications
and the one log line per finished job.

What was written is done with even if a later write fails; what was not stays for the next
flush. Fencing on ``(id, attempts)`` makes a late write of a run that lost its lease a no-op.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from django.db import InterfaceError, OperationalError, connections

from .. import clock, signals
from ..base import Status
from ..models import Job
from ..notifications import hub
from ..notifications.names import RESULT_IN_MESSAGE_BYTES
from ..querysets import CANCELLED_ERROR, DEFAULT_EXCEPTION_PATH, JobQuerySet
from ..serialization import printable
from .endings import Endings, log
from .outcomes import Outcome, backoff, describe, failed

logger = logging.getLogger("django_jobqueue.worker")

_LOST = (OperationalError, InterfaceError)
#: Result bytes one completion statement carries at most (more are split across statements),
#: far below the protocol's and PostgreSQL's 1 GB limits on a statement.
WRITE_BATCH_BYTES = 32 * 2**20


def _by_size(by_ttl: dict[int, list[Outcome]]) -> list[list[Outcome]]:
    """The completions of each result_ttl, in batches of at most WRITE_BATCH_BYTES of
    results (an outcome larger than that alone)."""
    batches: list[list[Outcome]] = []
    for done in by_ttl.values():
        batch: list[Outcome] = []
        size = 0
        for outcome in done:
            if batch and size + outcome.size > WRITE_BATCH_BYTES:
                batches.append(batch)
                batch, size = [], 0
            batch.append(outcome)
            size += outcome.size
        batches.append(batch)
    return batches


class Writer:
    """Records the outcomes in ``done`` (appended to from the jobs' threads).

    ``finished(written)`` is called with the outcomes a flush recorded; ``forget(id)`` when a
    dead letter ends a run the worker may still count as running.
    """

    def __init__(
        self,
        using: str,
        name: str,
        *,
        finished: Callable[[list[Outcome]], None],
        forget: Callable[[int], None],
        between: Callable[[], None] = lambda: None,
    ) -> None:
        self.using = using
        self.name = name
        self.finished = finished
        self.forget = forget
        #: Called between two statements of a large write (the worker renews its leases).
        self.between = between
        #: Cancels and dead letters, one run at a time (also used by the worker's upkeep).
        self.endings = Endings(using, name, forget)
        self.done: deque[Outcome] = deque()
        #: The last write that failed as a lost connection: its outcomes and its error.
        self._failed_write: tuple[frozenset[int], str] | None = None
        #: While not None, what to send once the open transaction commits (worker/shortpath);
        #: a write error is then raised at once, for the caller to roll back.
        self.defer: list[Callable[[], None]] | None = None
        #: Runs whose claim was rolled back (worker/shortpath): their outcomes are dropped.
        self.void: set[tuple[int, int]] = set()

    def _jobs(self) -> JobQuerySet:
        return Job.objects.using(self.using)

    def flush(self) -> None:
        """Write every outcome reported so far: completions in one statement per result_ttl.

        An outcome the database refuses (not a lost connection) is written on its own, and a
        completion that cannot be stored fails its attempt instead.
        """
        if not self.done:
            return
        outcomes: list[Outcome] = []
        while self.done:
            outcomes.append(self.done.popleft())
        written: list[Outcome] = []
        if self.void:
            outcomes = self._drop_void(outcomes, written)
        try:
            if self.defer is not None:  # in the short path's transaction: it handles errors
                self._write(outcomes, written)
                return
            try:
                self._write(outcomes, written)
                self._failed_write = None
            except _LOST as exc:
                if not self._refused_again(outcomes, written, exc):
                    raise
                logger.error(
                    "worker name=%s: the database refused the same write twice (%s) though it "
                    "answers: writing each outcome on its own",
                    self.name,
                    describe(exc)[:300],
                )
                self._write_each(outcomes, written, refused=True)
            except Exception:
                logger.exception("worker name=%s: writing outcomes failed", self.name)
                self._write_each(outcomes, written)
        finally:
            done = {id(o) for o in written}
            self.done.extendleft(reversed([o for o in outcomes if id(o) not in done]))
            self.finished(written)

    def _drop_void(self, outcomes: list[Outcome], written: list[Outcome]) -> list[Outcome]:
        """Account for the outcomes of runs whose claim was rolled back, without writing
        them: their job is queued again with the same attempt number, so a write fenced on
        it could land on the next run's. Return the others."""
        for outcome in outcomes:
            if outcome.job.fence in self.void:
                self.void.discard(outcome.job.fence)
                written.append(outcome)
                log(outcome, "discarded (its claim was rolled back)")
        return [o for o in outcomes if o not in written]

    def flush_until_written(self, lost: Callable[[BaseException], None]) -> None:
        """At exit: flush, waiting out lost connections (``lost``), up to 50 tries."""
        for _ in range(50):
            try:
                self.flush()
                return
            except _LOST as exc:
                lost(exc)
        logger.error("worker name=%s could not write %d outcomes", self.name, len(self.done))

    def _refused_again(
        self, outcomes: list[Outcome], written: list[Outcome], exc: BaseException
    ) -> bool:
        """True when the write of ``outcomes`` failed as a lost connection for the second
        time in a row, the same way, while the database answers: the statement itself is
        refused (too large for the server, say) and retrying it would wedge the worker."""
        done = {id(o) for o in written}
        key = (frozenset(id(o) for o in outcomes if id(o) not in done), describe(exc)[:300])
        again = self._failed_write == key
        self._failed_write = key
        return again and self._database_answers()

    def _database_answers(self) -> bool:
        connection = connections[self.using]
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except _LOST:
            return False
        return True

    def _write_each(
        self, outcomes: list[Outcome], written: list[Outcome], *, refused: bool = False
    ) -> None:
        done = {id(o) for o in written}
        for outcome in outcomes:
            if id(outcome) not in done:
                self._write_alone(outcome, written, refused=refused)
        self._failed_write = None

    def _write_alone(
        self, outcome: Outcome, written: list[Outcome], *, refused: bool = False
    ) -> None:
        """Write one outcome; one the database refuses fails its attempt instead (a result
        it cannot store), or is left to its lease (a failure it cannot record). With
        ``refused``, a "lost connection" while the database answers counts as refused."""
        try:
            self._write([outcome], written)
            return
        except _LOST as lost:
            if not (refused and self._database_answers()):
                raise
            exc: BaseException = lost
        except Exception as error:
            exc = error
        if not outcome.ok:
            logger.error(
                "worker name=%s: cannot record job %s (%s); it runs again after its lease",
                self.name,
                printable(outcome.job.job_id),
                printable(describe(exc)[:300]),
                exc_info=exc,
            )
            written.append(outcome)  # nothing more to try: the lease decides
            return
        failure = failed(
            outcome.job,
            time.monotonic() - outcome.duration,
            f"The job's result could not be stored: {describe(exc)}",
        )
        self._write_alone(failure, written, refused=refused)
        for index, item in enumerate(written):
            if item is failure:
                written[index] = outcome  # the run is accounted for under its own outcome

    def _write(self, outcomes: list[Outcome], written: list[Outcome]) -> None:
        """Write ``outcomes``, appending each to ``written`` once its statement committed.

        The last progress of a run goes first (one statement for them all, only if some run
        left one unwritten). A run someone asked to stop ends ``cancelled`` whatever it
        returned or raised; the completion and retry statements also honour a cancel
        request recorded on the row after the run ended.
        """
        now = clock.now()
        jobs = self._jobs()
        outcomes = self._committed(outcomes, written)
        progress = [(o.job.fence, o.progress) for o in outcomes if o.progress is not None]
        if progress:
            jobs.set_progress(progress)
            for outcome in outcomes:
                outcome.progress = None
        by_ttl: dict[int, list[Outcome]] = {}
        for outcome in outcomes:
            if outcome.ok and not outcome.cancelled:
                by_ttl.setdefault(outcome.job.result_ttl, []).append(outcome)
        for done in _by_size(by_ttl):
            fenced = [o.job.fence for o in done]
            ttl = done[0].job.result_ttl
            with_result = [o for o in done if o.result is not None]
            expires = now + timedelta(seconds=ttl)
            if with_result:
                results = {o.job.id: o.result for o in with_result}
                mine = jobs.complete_with_results(fenced, results, now=now, expires_at=expires)
            else:
                mine = jobs.complete(fenced, now=now, expires_at=expires)
            written.extend(done)
            for o in done:
                if o.job.id in mine.cancelled:
                    o.cancelled = True
                    log(o, "cancelled")
                else:
                    log(o, "completed" if o.job.id in mine else "discarded (lease lost)")
            self._after_write(done, [o.job.job_id for o in done if mine.get(o.job.id)])
            self.between()  # a long write must not outlast the leases it holds
        self._write_failures(outcomes, written, now)

    def _committed(self, outcomes: list[Outcome], written: list[Outcome]) -> list[Outcome]:
        """Account for the outcomes whose completion committed with the job's own writes
        (``@job(atomic=True)``): logged and notified, nothing to write; return the others."""
        for outcome in outcomes:
            if outcome.committed:
                written.append(outcome)
                log(outcome, "completed")
                self._after_write([outcome], [outcome.job.job_id] if outcome.notify else [])
        return [o for o in outcomes if not o.committed]

    def _write_failures(
        self, outcomes: list[Outcome], written: list[Outcome], now: datetime
    ) -> None:
        """Write the cancels, retries and dead letters among ``outcomes``, one at a time."""
        jobs = self._jobs()
        for outcome in outcomes:
            if outcome.ok and not outcome.cancelled:
                continue
            job = outcome.job
            if outcome.cancelled:
                notify = self.endings.cancelled(job, outcome=outcome)
                written.append(outcome)
                self._after_write([outcome], [job.job_id] if notify else [])
                continue
            if not outcome.retry or job.attempts >= job.max_attempts:
                notify = self.endings.dead_letter(
                    job, outcome.error, outcome.traceback, outcome=outcome
                )
                written.append(outcome)
                self._after_write([outcome], [job.job_id] if notify else [])
                continue
            delay = outcome.retry_after
            if delay is None:
                delay = backoff(job.attempts)
            retried = jobs.retry(
                *job.fence,
                run_after=now + timedelta(seconds=delay),
                error=outcome.error,
                now=now,
                result_ttl=job.result_ttl,
                exception_path=outcome.exception_path or DEFAULT_EXCEPTION_PATH,
                traceback=outcome.traceback,
            )
            written.append(outcome)
            if retried is not None and retried[0] == Status.CANCELLED:
                outcome.cancelled = True
                log(outcome, "cancelled")
                self._after_write([outcome], [job.job_id] if retried[1] else [])
                continue
            log(outcome, f"failed, retry in {delay:.1f}s" if retried else "discarded (lease lost)")
            self._after_write([outcome], [])

    def _after_write(self, outcomes: list[Outcome], notify: list[str]) -> None:
        """Notify the waiters of ``notify`` and send ``job_finished``: now, or (inside the
        short path's transaction, ``defer``) once it commits."""
        if self.defer is not None:
            self.defer.append(partial(self._announce, outcomes, notify))
        else:
            self._announce(outcomes, notify)

    def _announce(self, outcomes: list[Outcome], notify: list[str]) -> None:
        if notify:
            # A small result rides in the "finished" message: its waiters skip their read.
            completed = {
                o.job.job_id: (o.job.attempts, o.result)
                for o in outcomes
                if o.ok and not o.cancelled and o.size <= RESULT_IN_MESSAGE_BYTES
            }
            hub().job_finished(notify, completed)
        if signals.job_finished.has_listeners():
            for outcome in outcomes:
                signals.send_robust(
                    signals.job_finished,
                    sender=Job,
                    job_id=outcome.job.job_id,
                    ok=outcome.ok and not outcome.cancelled,
                    error=CANCELLED_ERROR if outcome.cancelled else outcome.error,
                    cancelled=outcome.cancelled,
                )
