"""Cancelling jobs: ``cancel(job_id)`` and its async twin.

A queued job is cancelled at once and never runs; its waiters get ``JobCancelledError``. A
running job is asked to stop: its worker learns of it through the channel layer at once or,
without one, at its next heartbeat (``HEARTBEAT_INTERVAL``), sets the job's
``JobContext.cancel_requested`` (and cancels an ``async def`` job's task), and records the
run as ``cancelled`` whatever it returns or raises afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial

from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from . import conf
from .base import Status
from .models import Job
from .notifications import hub
from .routers import queue_database, queue_databases

logger = logging.getLogger("django_jobqueue.control")


def cancel(job_id: str, *, using: str | None = None) -> bool:
    """Cancel the job ``job_id``.

    Returns True when it cancelled a queued job or asked a running one to stop, False when
    the job had already finished (it is left unchanged) or does not exist. ``using``: the
    alias of its database, if known (a handle knows its queue's); else each queue database
    is tried in turn (``JOBQUEUE["QUEUES"]``).
    """
    if not isinstance(job_id, str):
        return False
    for alias in [using] if using is not None else queue_databases():
        if _cancel(job_id, alias):
            return True
    return False


def _cancel(job_id: str, using: str) -> bool:
    found = Job.objects.using(using).cancel(job_id, now=timezone.now())
    if found is None:
        return False
    notifier = hub()
    if found.running_on is None:
        logger.info("job id=%r cancelled while queued", job_id)
        if found.notify:  # after the commit: a waiter told earlier would read "queued"
            transaction.on_commit(lambda: notifier.job_finished([job_id]), using=using)
    else:
        logger.info("job id=%r: asked worker %r to stop it", job_id, found.running_on)
        worker = found.running_on
        # After the commit: the worker reads the flag from the database when told.
        transaction.on_commit(lambda: notifier.request_cancel(worker, job_id), using=using)
    return True


async def acancel(job_id: str, *, using: str | None = None) -> bool:
    """Async twin of :func:`cancel`."""
    return await sync_to_async(cancel)(job_id, using=using)


def retry_now(job_ids: Iterable[str], *, using: str | None = None) -> list[str]:
    """Start the queued retries among ``job_ids`` now, without waiting for their back-off
    (``run_after``); return the ids of those it hurried, in no particular order.

    Only a job that is queued after a failed attempt and still waits is changed; a running,
    finished or blocked job, one that is ready already and a first run deferred with
    ``run_after`` are left as they are (not in the list). Workers of their queues are woken
    when the transaction commits. Paused queues and limits still hold. ``using``: the alias
    of the jobs' database, if known; else one statement on each queue database.
    """
    ids = [job_id for job_id in dict.fromkeys(job_ids) if isinstance(job_id, str)]
    started: list[str] = []
    for alias in [using] if using is not None else queue_databases():
        hurried = Job.objects.using(alias).retry_now(ids, now=timezone.now()) if ids else []
        if hurried:
            queues = {queue for _job_id, queue in hurried}
            transaction.on_commit(partial(hub().wake_workers, queues), using=alias)
            logger.info("retry now: %d job(s) of queues %s", len(hurried), sorted(queues))
            started += [job_id for job_id, _queue in hurried]
    return started


#: Queued jobs cancelled per statement by :func:`cancel_queued`.
CANCEL_BATCH = 1000


def cancel_queued(queue: str, *, name: str | None = None) -> int:
    """Cancel every queued job of ``queue`` (of the job ``name`` only, if given); return
    how many. Running jobs are left alone.

    In batches of :data:`CANCEL_BATCH`, each one short UPDATE per distinct time kept (the
    job's ``result_ttl``, or ``RESULT_TTL``'s cancelled time with ``ttl_by_outcome``),
    fenced on the status (a job a worker claims meanwhile runs, and is not counted). Their
    waiters are notified, as :func:`cancel` does for one job.
    """
    jobs = Job.objects.using(queue_database(queue))
    chosen = jobs.filter(status=Status.QUEUED, queue=queue)
    if name is not None:
        chosen = chosen.filter(name=name)
    total = 0
    notifier = hub()
    cancelled_ttl = conf.result_ttl(Status.CANCELLED.value)
    while True:
        batch = [
            (pk, cancelled_ttl if by_outcome else ttl, job_id, notify)
            for pk, ttl, job_id, notify, by_outcome in chosen.order_by("pk").values_list(
                "pk", "result_ttl", "job_id", "notify", "ttl_by_outcome"
            )[:CANCEL_BATCH]
        ]
        if not batch:
            return total
        now = timezone.now()
        for ttl in {row[1] for row in batch}:
            total += jobs.cancel_queued_rows(
                [row[0] for row in batch if row[1] == ttl], result_ttl=ttl, now=now
            )
        waited = [row[2] for row in batch if row[3]]
        if waited:
            transaction.on_commit(partial(notifier.job_finished, waited), using=jobs.db)
        logger.info("cancelled up to %d queued jobs of queue=%r name=%r", len(batch), queue, name)
