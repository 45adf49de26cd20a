"""Recording endings, in whatever transaction is open on the job's database: completions
(:func:`complete`, also written inside an ``@job(atomic=True)`` job's own transaction),
cancels and dead letters (:class:`Endings`, one run at a time); and the one log line of every
finished attempt, rendered (like its metrics and its ``job_finished`` signal) from the
attempt's :class:`~django_jobqueue.base.Ending`. :class:`~.writer.Writer` calls them, batches,
orders and announces."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from functools import partial

from .. import clock, signals, telemetry
from ..base import ClaimedJob, Ending
from ..models import DeadLetter, Job
from ..notifications import hub
from ..querysets import DEFAULT_EXCEPTION_PATH, JobQuerySet
from ..serialization import printable
from .outcomes import Outcome

logger = logging.getLogger("django_jobqueue.worker")

#: ``log(outcome, *LEASE_LOST)``: the run lost its lease, another worker owns the job now.
LEASE_LOST: tuple[Ending, str] = (Ending.DISCARDED, "lease lost")


def log(outcome: Outcome, ending: Ending, detail: str = "") -> None:
    """Record how the attempt ``outcome`` ended: on the outcome (``job_finished`` sends it),
    in the worker-side metrics (:func:`.telemetry.attempt_ended`) and in the one log line of
    the attempt (id, name, attempt, duration, ``outcome=`` :meth:`Ending.render`)."""
    job = outcome.job
    outcome.ending = ending
    telemetry.attempt_ended(job, ending, outcome.duration)
    logger.info(
        "job id=%s name=%s queue=%s attempt=%d/%d duration=%.4fs outcome=%s%s",
        printable(job.job_id),
        printable(job.name),
        printable(job.queue),
        job.attempts,
        job.max_attempts,
        outcome.duration,
        ending.render(detail),
        f" error={outcome.error!r}" if outcome.error else "",
    )


def complete(using: str, outcomes: Sequence[Outcome], now: datetime) -> list[tuple[Ending, bool]]:
    """Record the completions of ``outcomes`` (runs of one ``result_ttl``, with their
    results) in one statement on ``using``, fenced on ``(id, attempts)``; for each, the ending
    recorded and whether someone waits for it: ``COMPLETED``; ``CANCELLED`` (a cancel request
    was recorded first: ``outcome.cancelled`` is set); ``DISCARDED`` (the run is not ours
    any more: nothing written)."""
    jobs = Job.objects.using(using)
    fenced = [o.job.fence for o in outcomes]
    expires = now + timedelta(seconds=outcomes[0].job.result_ttl)
    results = {o.job.id: o.result for o in outcomes if o.result is not None}
    if results:
        mine = jobs.complete_with_results(fenced, results, now=now, expires_at=expires)
    else:
        mine = jobs.complete(fenced, now=now, expires_at=expires)
    endings: list[tuple[Ending, bool]] = []
    for outcome in outcomes:
        pk = outcome.job.id
        if pk not in mine:
            endings.append((Ending.DISCARDED, False))
        elif pk in mine.cancelled:
            outcome.cancelled = True
            endings.append((Ending.CANCELLED, mine[pk]))
        else:
            endings.append((Ending.COMPLETED, mine[pk]))
    return endings


class Endings:
    """Cancels and dead letters of single runs on ``using``; ``forget(id)`` is called when
    one ends a run the worker may still count as running. What follows a write (``forget``,
    notifications, ``job_dead_lettered``) goes through ``after_commit(action)``: the writer
    defers it until the transaction it writes in commits (by default: done at once)."""

    def __init__(
        self,
        using: str,
        name: str,
        forget: Callable[[int], None],
        *,
        after_commit: Callable[[Callable[[], None]], None] = lambda action: action(),
    ) -> None:
        self.using = using
        self.name = name
        self.forget = forget
        self.after_commit = after_commit

    def _jobs(self) -> JobQuerySet:
        return Job.objects.using(self.using)

    def cancelled(
        self,
        job: ClaimedJob,
        *,
        outcome: Outcome | None = None,
        error: str = "",
        lease_expired_before: datetime | None = None,
    ) -> bool:
        """End the run ``job``, which someone asked to stop, as ``cancelled``; log it; return
        whether someone waits for it (notified here when there is no ``outcome``, as in
        :meth:`dead_letter`). A run no longer ours is logged as discarded."""
        notify = self._jobs().finish_cancelled(
            *job.fence,
            now=clock.now(),
            result_ttl=job.result_ttl,
            lease_expired_before=lease_expired_before,
        )
        if notify is None:
            if outcome is not None:
                log(outcome, *LEASE_LOST)
            return False
        if outcome is not None:
            outcome.cancelled = True
        log(outcome or Outcome(job, False, 0.0, error=error, cancelled=True), Ending.CANCELLED)
        self.after_commit(partial(self._ended, job, notify and outcome is None))
        return notify

    def dead_letter(
        self,
        job: ClaimedJob,
        error: str,
        trace: str,
        *,
        outcome: Outcome | None = None,
        lease_expired_before: datetime | None = None,
    ) -> bool:
        """Fail the run ``job`` for good (:meth:`JobQuerySet.dead_letter`), log it, send
        ``job_dead_lettered``; return whether someone waits for it.

        Without ``outcome`` (a job that never ran here: unknown name, expired lease) its
        waiters are notified here; with one, by the caller after its write.
        """
        now = clock.now()
        done = self._jobs().dead_letter(
            job,
            error,
            trace,
            now=now,
            lease_expired_before=lease_expired_before,
            exception_path=(outcome and outcome.exception_path) or DEFAULT_EXCEPTION_PATH,
        )
        if done is None:  # not ours any more, or someone asked it to stop
            return self.cancelled(
                job, outcome=outcome, error=error, lease_expired_before=lease_expired_before
            )
        letter, notify = done
        log(outcome or Outcome(job, False, 0.0, error=error), Ending.DEAD_LETTERED)
        self.after_commit(partial(self._ended, job, notify and outcome is None, letter))
        return notify

    def _ended(self, job: ClaimedJob, notify: bool, letter: DeadLetter | None = None) -> None:
        """Once the ending of ``job`` committed: send ``job_dead_lettered`` for ``letter``,
        notify the waiters (if ``notify``), forget the run."""
        if letter is not None and signals.job_dead_lettered.has_listeners():
            signals.send_robust(signals.job_dead_lettered, sender=DeadLetter, dead_letter=letter)
        if notify:
            hub().job_finished([job.job_id])
        self.forget(job.id)
