"""Running jobs in the calling thread, on its database connection: ``JOBQUEUE["EAGER"]`` and
:func:`django_jobqueue.testing.run_jobs`.

Only what is specific to running in the caller's process is here: claiming locally (an
attempt, a lease, under this process's worker name :data:`INLINE_WORKER`) and deciding when
to stop. The attempt itself is the worker's (:func:`.attempt.run_here`: context, progress,
``retry_on``, ``Retry(after=...)``, ``atomic=True``, the time limit), and its ending is
recorded by the worker's :class:`~.writer.Writer` (completion, retry or dead letter, the
"finished" notification, ``job_started`` and ``job_finished``). Only the thread differs: the
caller's, so a job sees the rows of a ``TestCase``'s transaction, and no clock interrupts it
(a run longer than its ``time_limit`` still fails once it returns).
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import timedelta
from typing import Any

from django.core.signals import setting_changed
from django.db import transaction
from django.utils import timezone

from .. import conf, signals
from ..base import ClaimedJob
from ..handles import JobHandle
from ..models import Job
from ..producing import start_reruns
from ..querysets import JobQuerySet
from ..querysets.batches import Released
from ..querysets.dependencies import ANNOUNCERS
from ..registry import registry
from ..routers import in_user_atomic, queue_database
from .attempt import announce_start, run_here
from .outcomes import Outcome
from .running import RunningJob
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
    """Run the claimed ``job`` here and record its outcome; None if its name is unknown (it
    is dead-lettered, as a worker does)."""
    if job.name not in registry:
        writer.not_registered(job)
        return None
    running = RunningJob(job, registry.get(job.name), worker=INLINE_WORKER, using=writer.using)
    announce_start(running)
    outcome = run_here(running)  # worker/attempt.py: the attempt a worker runs
    writer.report(outcome)
    writer.flush()
    return outcome


def run_now(job_id: str, *, using: str | None = None) -> int:
    """Run the queued job ``job_id`` here, every attempt at once (no backoff, whatever its
    ``run_after``), until it completes or fails for good, or an attempt asks to be retried
    later (``Retry(after=...)``: it stays queued until then); the number of attempts run."""
    using = using or queue_database()
    writer = _writer(using)
    attempts = 0
    while True:
        claimed = _jobs(using).claim_job(
            job_id, worker=INLINE_WORKER, now=timezone.now(), lease_until=_lease_until()
        )
        if claimed is None:
            return attempts
        attempts += 1
        outcome = execute(claimed, writer)
        if outcome is None or outcome.retry_after:
            return attempts


def run_ready(queue: str | None = None, *, using: str | None = None) -> int:
    """Run the jobs of ``queue`` (None: every queue) that are ready, one at a time in claim
    order (priority, then enqueue order; groups respected), until none is, including the
    runs a job's duplicates asked for while it ran (``on_duplicate="rerun"``); how many ran."""
    using = using or queue_database()
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
            if start_reruns(using):  # runs asked for while a job ran (on_duplicate="rerun")
                continue
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
    using = queue_database(handle.queue)

    def run() -> None:
        _run_and_drain(handle.id, using)
        handle.refresh()

    if in_user_atomic(using):
        transaction.on_commit(run, using=using)
    else:
        run()


_local = threading.local()


def _released_here() -> list[str]:
    """The ids of children queued by endings recorded in this thread, to run (``EAGER``)."""
    if not hasattr(_local, "released"):
        _local.released = []
    released: list[str] = _local.released
    return released


def _run_and_drain(job_id: str | None, using: str) -> None:
    """Run ``job_id`` (``EAGER``), then the jobs endings queued meanwhile (children, batch
    callbacks), and theirs in turn; one loop per thread, however deep the workflow."""
    _local.draining = True
    try:
        if job_id is not None:
            run_now(job_id, using=using)
        pending = _released_here()
        while pending:
            run_now(pending.pop(0), using=using)
    finally:
        _local.draining = False


def _eager_released(released: Released) -> None:
    """``ANNOUNCERS`` while ``EAGER`` is on: run the jobs an ending queued (workflows)."""
    if not conf.settings.EAGER:
        return
    _released_here().extend(released.queued)
    if not getattr(_local, "draining", False):  # e.g. a batch sealed with its jobs done
        _run_and_drain(None, queue_database())


ANNOUNCERS.append(_eager_released)


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
