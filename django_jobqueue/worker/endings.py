"""Ending one run at a time: cancelled, or failed for good (a dead letter); and the one log
line of every finished attempt."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from .. import clock, signals, telemetry
from ..base import ClaimedJob
from ..models import DeadLetter, Job
from ..notifications import hub
from ..querysets import DEFAULT_EXCEPTION_PATH, JobQuerySet
from ..serialization import printable
from .outcomes import Outcome

logger = logging.getLogger("django_jobqueue.worker")


def log(outcome: Outcome, result: str) -> None:
    """The one log line of a finished attempt: id, name, attempt, duration, outcome;
    the worker-side metrics count the same outcome (:func:`.telemetry.attempt_ended`)."""
    job = outcome.job
    telemetry.attempt_ended(job, result, outcome.duration)
    logger.info(
        "job id=%s name=%s queue=%s attempt=%d/%d duration=%.4fs outcome=%s%s",
        printable(job.job_id),
        printable(job.name),
        printable(job.queue),
        job.attempts,
        job.max_attempts,
        outcome.duration,
        result,
        f" error={outcome.error!r}" if outcome.error else "",
    )


class Endings:
    """Cancels and dead letters of single runs on ``using``; ``forget(id)`` is called when
    one ends a run the worker may still count as running."""

    def __init__(self, using: str, name: str, forget: Callable[[int], None]) -> None:
        self.using = using
        self.name = name
        self.forget = forget

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
                log(outcome, "discarded (lease lost)")
            return False
        if outcome is not None:
            outcome.cancelled = True
        log(outcome or Outcome(job, False, 0.0, error=error, cancelled=True), "cancelled")
        if notify and outcome is None:
            hub().job_finished([job.job_id])
        self.forget(job.id)
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
        if signals.job_dead_lettered.has_listeners():
            signals.send_robust(signals.job_dead_lettered, sender=DeadLetter, dead_letter=letter)
        log(outcome or Outcome(job, False, 0.0, error=error), "dead-lettered")
        if notify and outcome is None:
            hub().job_finished([job.job_id])
        self.forget(job.id)
        return notify
