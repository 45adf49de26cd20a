"""Running jobs in the calling thread, on its database connection: ``JOBQUEUE["EAGER"]`` and
:func:`django_jobqueue.testing.run_jobs`.

A job run here goes through the same queue verbs as on a worker: it is claimed (an attempt,
a lease), run, and its outcome written by a :class:`~.writer.Writer` (completion, retry or
dead letter, the "finished" notification, ``job_started`` and ``job_finished``). Only the
thread differs: the caller's, so a job sees the rows of a ``TestCase``'s transaction.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.core.signals import setting_changed
from django.db import router, transaction
from django.utils import timezone

from .. import conf, signals
from ..base import ClaimedJob
from ..context import JobContext, current_run
from ..exceptions import JobNotRegistered
from ..handles import JobHandle
from ..models import Job
from ..querysets import JobQuerySet
from ..registry import registry
from ..waiting import in_user_atomic
from .atomic import run_atomic
from .outcomes import Outcome, describe, failed, succeeded
from .writer import Writer

#: The worker name of runs made in this process (``worker_ids`` of a task run here).
INLINE_WORKER = f"{socket.gethostname()}:{os.getpid()}:inline"


def _jobs(using: str) -> JobQuerySet:
    return Job.objects.using(using)


def _writer(using: str) -> Writer:
    return Writer(using, INLINE_WORKER, finished=lambda written: None, forget=lambda pk: None)


def _lease_until() -> Any:
    return timezone.now() + timedelta(seconds=conf.settings.LEASE_SECONDS)


def execute(job: ClaimedJob, writer: Writer) -> Outcome | None:
    """Run the claimed ``job`` here and write its outcome; None if its name is unknown (it
    is dead-lettered, as a worker does)."""
    if job.name not in registry:
        writer.endings.dead_letter(job, describe(JobNotRegistered(job.name)), "")
        return None
    definition = registry.get(job.name)
    if signals.job_started.has_listeners():
        signals.send_robust(
            signals.job_started, sender=Job, job_id=job.job_id, attempt=job.attempts
        )
    args: list[Any] = list(job.args)
    if definition.takes_context:
        context = JobContext(
            job_id=job.job_id,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            queue=job.queue,
            worker=INLINE_WORKER,
        )
        args.insert(0, context)
    token = current_run.set(job)
    started = time.monotonic()
    try:
        if definition.is_async:
            outcome = succeeded(job, async_to_sync(definition.func)(*args, **job.kwargs), started)
        elif definition.atomic:  # its writes and completion in one transaction, as on a worker
            outcome = run_atomic(writer.using, job, lambda: definition.func(*args, **job.kwargs))
        else:
            outcome = succeeded(job, definition.func(*args, **job.kwargs), started)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the job's failure is its outcome, as on a worker
        outcome = failed(job, started, describe(exc))
    finally:
        current_run.reset(token)
    writer.done.append(outcome)
    writer.flush()
    return outcome


def run_now(job_id: str, *, using: str | None = None) -> int:
    """Run the queued job ``job_id`` here, every attempt at once (no backoff, whatever its
    ``run_after``), until it completes or fails for good; the number of attempts run."""
    using = using or router.db_for_write(Job)
    writer = _writer(using)
    attempts = 0
    while True:
        claimed = _jobs(using).claim_job(
            job_id, worker=INLINE_WORKER, now=timezone.now(), lease_until=_lease_until()
        )
        if claimed is None:
            return attempts
        attempts += 1
        execute(claimed, writer)


def run_ready(queue: str | None = None, *, using: str | None = None) -> int:
    """Run the jobs of ``queue`` (None: every queue) that are ready, one at a time in claim
    order (priority, then enqueue order; groups respected), until none is; how many ran."""
    using = using or router.db_for_write(Job)
    writer = _writer(using)
    ran = 0
    while True:
        claimed = _jobs(using).claim(
            queue=queue,
            limit=1,
            worker=INLINE_WORKER,
            now=timezone.now(),
            lease_until=_lease_until(),
        )
        if not claimed:
            return ran
        for job in claimed:
            ran += 1
            execute(job, writer)


# -- JOBQUEUE["EAGER"] -----------------------------------------------------------------------


def _run_enqueued(sender: Any, handle: JobHandle, **kwargs: Any) -> None:
    """``job_enqueued`` receiver while ``EAGER`` is on: run the job at once, or when the
    caller's transaction commits (a ``TestCase``'s own transaction does not count)."""
    if not conf.settings.EAGER:
        return
    using = router.db_for_write(Job)

    def run() -> None:
        run_now(handle.id, using=using)
        handle.refresh()

    if in_user_atomic(using):
        transaction.on_commit(run, using=using)
    else:
        run()


def follow_eager_setting(**kwargs: Any) -> None:
    """Connect the eager receiver while ``JOBQUEUE["EAGER"]`` is on, and only then: without
    it ``job_enqueued`` has no receiver and enqueue sends nothing."""
    if conf.settings.EAGER:
        signals.job_enqueued.connect(_run_enqueued, dispatch_uid="django_jobqueue.eager")
    else:
        signals.job_enqueued.disconnect(dispatch_uid="django_jobqueue.eager")


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "JOBQUEUE":
        follow_eager_setting()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_jobqueue.eager.settings")
