"""Writing outcomes: the one API that records the ending of an attempt (completed, retried,
dead-lettered, cancelled, discarded), then its notifications and its one log line.

Whoever ran an attempt hands its outcome to :meth:`Writer.report`; :meth:`Writer.flush`
records what was reported: batched, fenced completions (:func:`.endings.complete`), retries,
dead letters and cancels. What was written is done with even if a later write fails; what was
not stays for the next flush. Fencing on ``(id, attempts)`` makes a late write of a run that
lost its lease a no-op.

Each write runs in its own transaction, unless the caller chooses one: the short path records
in the transaction of its claims (:meth:`Writer.in_transaction`), and ``@job(atomic=True)`` in
the job's own (:mod:`.atomic`: its completion arrives ``committed``, the writer only logs and
announces it). Only the writer sets its own state.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial

from django.db import InterfaceError, OperationalError, connections, transaction

from .. import clock, signals
from ..base import ClaimedJob, Ending, Status
from ..exceptions import JobNotRegistered
from ..models import Job
from ..notifications import hub
from ..notifications.names import RESULT_IN_MESSAGE_BYTES
from ..querysets import CANCELLED_ERROR, DEFAULT_EXCEPTION_PATH, JobQuerySet
from ..serialization import printable
from .endings import LEASE_LOST, Endings, complete, log
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
    """Records the outcomes reported to it (:meth:`report`, from any thread) when it flushes.

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
        self.endings = Endings(using, name, forget, after_commit=self.after_commit)
        #: The outcomes reported and not yet written (read it; :meth:`report` appends).
        self.done: deque[Outcome] = deque()
        #: The last write that failed as a lost connection: its outcomes and its error.
        self._failed_write: tuple[frozenset[int], str] | None = None
        #: Inside :meth:`in_transaction`: what to do once its transaction commits, and the
        #: outcomes written in it; a write error is then raised at once, for it to roll back.
        self._block: _Block | None = None
        #: Runs (:attr:`ClaimedJob.claim`) whose claim was rolled back
        #: (:meth:`in_transaction`): their outcomes are dropped, never written.
        self._void: set[int] = set()

    def _jobs(self) -> JobQuerySet:
        return Job.objects.using(self.using)

    def report(self, outcome: Outcome) -> None:
        """Record ``outcome`` at the next :meth:`flush` (callable from any thread)."""
        self.done.append(outcome)

    def not_registered(self, job: ClaimedJob) -> None:
        """Dead-letter, now, the claimed run ``job`` whose name no job of this process has
        (code deployed out of order); its waiters are told."""
        self.endings.dead_letter(job, describe(JobNotRegistered(job.name)), "")

    def after_commit(self, action: Callable[[], None]) -> None:
        """Do ``action`` (what others may act on: a notification, a signal) now or, inside
        :meth:`in_transaction`, once its transaction commits (never if it rolls back)."""
        if self._block is not None:
            self._block.deferred.append(action)
        else:
            action()

    @contextmanager
    def in_transaction(self, started: Collection[ClaimedJob]) -> Iterator[None]:
        """Record the endings flushed in the block in one transaction on ``using``, with
        whatever else the block writes there (the short path: its claims); call ``finished``
        and :meth:`after_commit`'s actions once it commits.

        In the block a write error is raised at once, for the transaction to roll back. Then
        the runs of ``started`` (read at that moment: the block's claims that started) were
        never claimed, so their outcomes are dropped, never written (told apart by
        :attr:`ClaimedJob.claim` from a next claim of the job, which has the same fence);
        the other outcomes the block wrote go back to :attr:`done`. The block's claims that
        never started are the caller's to forget."""
        block = self._block = _Block()
        try:
            with transaction.atomic(using=self.using):
                yield
        except BaseException:
            self._void.update(job.claim for job in started)
            self.done.extendleft(reversed(block.written))  # rolled back: not written
            raise
        finally:
            self._block = None
        if block.written:
            self.finished(block.written)
        for action in block.deferred:  # committed: now the waiters may read the rows
            action()

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
        if self._void:
            outcomes = self._drop_void(outcomes)
        block = self._block
        try:
            if block is not None:  # in_transaction(): its caller handles errors
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
            if block is None:
                self.finished(written)
            else:  # once it commits
                block.written += written

    def _drop_void(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Account for (``finished``) the outcomes of runs whose claim was rolled back, not
        written: a write fenced on their attempt would land on the next claim's. The rest."""
        void = [o for o in outcomes if o.job.claim in self._void]
        for outcome in void:
            self._void.discard(outcome.job.claim)
            log(outcome, Ending.DISCARDED, "its claim was rolled back")
        if void:
            self.finished(void)
        gone = {id(o) for o in void}
        return [o for o in outcomes if id(o) not in gone]

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
            endings = complete(self.using, done, now)
            written.extend(done)
            notify: list[str] = []
            for o, (ending, waited) in zip(done, endings, strict=True):
                log(o, *(LEASE_LOST if ending is Ending.DISCARDED else (ending,)))
                if waited:
                    notify.append(o.job.job_id)
            self._after_write(done, notify)
            self.between()  # a long write must not outlast the leases it holds
        self._write_failures(outcomes, written, now)

    def _committed(self, outcomes: list[Outcome], written: list[Outcome]) -> list[Outcome]:
        """Account for the outcomes whose completion committed with the job's own writes
        (``@job(atomic=True)``): logged and notified, nothing to write; return the others."""
        for outcome in outcomes:
            if outcome.committed:
                written.append(outcome)
                log(outcome, Ending.COMPLETED)
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
                log(outcome, Ending.CANCELLED)
                self._after_write([outcome], [job.job_id] if retried[1] else [])
                continue
            log(outcome, *((Ending.RETRIED, f"retry in {delay:.1f}s") if retried else LEASE_LOST))
            self._after_write([outcome], [])

    def _after_write(self, outcomes: list[Outcome], notify: list[str]) -> None:
        """Notify the waiters of ``notify`` and send ``job_finished``: now, or (inside
        :meth:`in_transaction`) once its transaction commits."""
        self.after_commit(partial(_announce, outcomes, notify))


class _Block:
    """One :meth:`Writer.in_transaction` block: what to do once it commits (in order), and
    the outcomes written in it."""

    def __init__(self) -> None:
        self.deferred: list[Callable[[], None]] = []
        self.written: list[Outcome] = []


def _announce(outcomes: list[Outcome], notify: list[str]) -> None:
    """Notify the waiters of ``notify``; send ``job_finished`` for each of ``outcomes``."""
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
                ending=outcome.ending,
            )
