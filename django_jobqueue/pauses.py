"""Pausing a queue: ``pause_queue(queue)`` and ``resume_queue(queue)``.

A pause is a :class:`~django_jobqueue.models.QueuePause` row, and the worker's claim skips
the queues that have one (in the claim's own statement: see
:meth:`~django_jobqueue.querysets.claiming.ClaimingQuerySet.claim`), so from the commit of
the pause no worker on any host claims a job of the queue; a worker hands back the jobs of
it that it claimed ahead and has not started within a second. Jobs keep being
enqueued, and jobs already running finish. Resuming deletes the row and wakes an idle worker
of the queue (over the channel layer, when there is one).

Queues exist by use: pausing a queue no job has used yet is allowed, and holds its first
jobs as well.
"""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from . import conf
from .base import Status
from .models import Job, QueuePause
from .notifications import hub
from .options import check_queue
from .registry import registry
from .routers import queue_database, queue_databases

logger = logging.getLogger("django_jobqueue.pauses")

#: The longest ``reason`` kept (a longer one is cut): it is shown in tables and the admin.
REASON_MAX_LENGTH = 1000


def pause_queue(queue: str, reason: str = "", by: str = "") -> QueuePause:
    """Pause ``queue``: no worker starts one of its jobs until :func:`resume_queue`.

    ``reason`` and ``by`` (who paused it) are shown by ``jobqueue status``, the metrics'
    ``jobqueue_queue_paused`` and the admin. Pausing a paused queue records the new reason,
    author and time. Returns the pause. An invalid queue name raises
    :class:`~django_jobqueue.InvalidJobError` and writes nothing.
    """
    check_queue(queue)
    if not isinstance(reason, str) or not isinstance(by, str):
        raise TypeError("pause_queue(): reason and by must be str")
    using = queue_database(queue)  # beside its jobs: the claim there reads it
    pause, _ = QueuePause.objects.using(using).update_or_create(
        queue=queue,
        defaults={
            "reason": reason[:REASON_MAX_LENGTH],
            "paused_by": by[: QueuePause._meta.get_field("paused_by").max_length],
            "paused_at": timezone.now(),
        },
    )
    logger.info("queue=%r paused by=%r reason=%r", queue, by, reason)
    return pause


def resume_queue(queue: str) -> bool:
    """Resume ``queue``: workers claim its jobs again (an idle one is woken at once when
    there is a channel layer, else at its next poll). Returns False if it was not paused."""
    check_queue(queue)
    using = queue_database(queue)
    deleted, _ = QueuePause.objects.using(using).filter(queue=queue).delete()
    if not deleted:
        return False
    logger.info("queue=%r resumed", queue)
    notifier = hub()
    transaction.on_commit(lambda: notifier.wake_workers([queue]), using=using)
    return True


def known_queues() -> set[str]:
    """The queues the code names, known without a query: the default queue and the
    registered jobs' queues (other queues exist only while jobs use them)."""
    named = (job.queue for job in map(registry.get, registry.names()) if job.queue)
    return {conf.settings.DEFAULT_QUEUE, *named}


def in_use(queue: str, using: str | None = None) -> bool:
    """Whether ``queue`` is in use: one of :func:`known_queues`, or one with a queued job
    (read through the claim indexes: never a scan of the finished jobs)."""
    if queue in known_queues():
        return True
    waiting = Job.objects.using(using or queue_database(queue)).filter(
        queue=queue, status=Status.QUEUED
    )
    return waiting.filter(limit_key__isnull=True).exists() or waiting.exists()


def paused_queues(using: str | None = None) -> dict[str, QueuePause]:
    """The paused queues, by name (one query of a table with a row per paused queue, on
    ``using``, else on each queue database)."""
    found: dict[str, QueuePause] = {}
    for alias in [using] if using is not None else queue_databases():
        found.update((pause.queue, pause) for pause in QueuePause.objects.using(alias))
    return dict(sorted(found.items()))


async def apause_queue(queue: str, reason: str = "", by: str = "") -> QueuePause:
    """Async twin of :func:`pause_queue`."""
    return await sync_to_async(pause_queue)(queue, reason, by)


async def aresume_queue(queue: str) -> bool:
    """Async twin of :func:`resume_queue`."""
    return await sync_to_async(resume_queue)(queue)
