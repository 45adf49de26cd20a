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

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from .. import signals, telemetry
from ..base import ClaimedJob
from ..models import DeadLetter, Job
from ..notifications import hub
from ..querysets import JobQuerySet
from .outcomes import Outcome, backoff, describe, failed

logger = logging.getLogger("django_jobqueue.worker")

_LOST = (OperationalError, InterfaceError)


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
    ) -> None:
        self.using = using
        self.name = name
        self.finished = finished
        self.forget = forget
        self.done: deque[Outcome] = deque()

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
        try:
            try:
                self._write(outcomes, written)
            except _LOST:
                raise
            except Exception:
                logger.exception("worker name=%s: writing outcomes failed", self.name)
                done = {id(o) for o in written}
                for outcome in outcomes:
                    if id(outcome) not in done:
                        self._write_alone(outcome, written)
        finally:
            done = {id(o) for o in written}
            self.done.extendleft(reversed([o for o in outcomes if id(o) not in done]))
            self.finished(written)

    def flush_until_written(self, lost: Callable[[BaseException], None]) -> None:
        """At exit: flush, waiting out lost connections (``lost``), up to 50 tries."""
        for _ in range(50):
            try:
                self.flush()
                return
            except _LOST as exc:
                lost(exc)
        logger.error("worker name=%s could not write %d outcomes", self.name, len(self.done))

    def _write_alone(self, outcome: Outcome, written: list[Outcome]) -> None:
        try:
            self._write([outcome], written)
            return
        except _LOST:
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
            failure = failed(
                outcome.job,
                time.monotonic() - outcome.duration,
                f"The job's result could not be stored: {describe(exc)}",
            )
        self._write_alone(failure, written)
        for index, item in enumerate(written):
            if item is failure:
                written[index] = outcome  # the run is accounted for under its own outcome

    def _write(self, outcomes: list[Outcome], written: list[Outcome]) -> None:
        """Write ``outcomes``, appending each to ``written`` once its statement committed."""
        now = timezone.now()
        by_ttl: dict[int, list[Outcome]] = {}
        for outcome in outcomes:
            if outcome.ok:
                by_ttl.setdefault(outcome.job.result_ttl, []).append(outcome)
        jobs = self._jobs()
        for ttl, done in by_ttl.items():
            fenced = [o.job.fence for o in done]
            with_result = [o for o in done if o.result is not None]
            expires = now + timedelta(seconds=ttl)
            if with_result:
                results = {o.job.id: o.result for o in with_result}
                mine = jobs.complete_with_results(fenced, results, now=now, expires_at=expires)
            else:
                mine = jobs.complete(fenced, now=now, expires_at=expires)
            written.extend(done)
            for o in done:
                self.log(o, "completed" if o.job.id in mine else "discarded (lease lost)")
            self._after_write(done, [o.job.job_id for o in done if mine.get(o.job.id)])
        for outcome in outcomes:
            if outcome.ok:
                continue
            job = outcome.job
            if job.attempts >= job.max_attempts:
                notify = self.dead_letter(job, outcome.error, outcome.traceback, outcome=outcome)
                written.append(outcome)
                self._after_write([outcome], [job.job_id] if notify else [])
                continue
            delay = backoff(job.attempts)
            retried = jobs.retry(
                *job.fence, run_after=now + timedelta(seconds=delay), error=outcome.error
            )
            written.append(outcome)
            self.log(
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

    @staticmethod
    def log(outcome: Outcome, result: str) -> None:
        """The one log line of a finished attempt: id, name, attempt, duration, outcome;
        the worker-side metrics count the same outcome (:func:`.telemetry.attempt_ended`)."""
        job = outcome.job
        telemetry.attempt_ended(job, result, outcome.duration)
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
        now = timezone.now()
        done = self._jobs().dead_letter(
            job, error, trace, now=now, lease_expired_before=lease_expired_before
        )
        if done is None:
            if outcome is not None:
                self.log(outcome, "discarded (lease lost)")
            return False
        letter, notify = done
        if signals.job_dead_lettered.has_listeners():
            signals.send_robust(signals.job_dead_lettered, sender=DeadLetter, dead_letter=letter)
        self.log(outcome or Outcome(job, False, 0.0, error=error), "dead-lettered")
        if notify and outcome is None:
            hub().job_finished([job.job_id])
        self.forget(job.id)
        return notify
