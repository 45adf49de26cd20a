"""Putting jobs in the queue: one INSERT per batch, deduplicated by job id.

The deduplication table of the design, enqueue side: an id that is queued or running, or
finished within its ``result_ttl``, is not run again (the caller gets a handle to it); an id
finished past its ``result_ttl`` is replaced by a new run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from . import telemetry
from .base import ACTIVE, JobSnapshot, NewJob
from .exceptions import JobQueueError
from .models import Job
from .querysets import INSERT_BATCH
from .routers import queue_database

_REPLACE_ROUNDS = 5
#: PostgreSQL's largest lock_timeout (INT_MAX milliseconds, about 24.8 days).
_LOCK_TIMEOUT_MAX_MS = 2**31 - 1


def new_job_id() -> str:
    return new_job_ids(1)[0]


def new_job_ids(count: int) -> list[str]:
    """``count`` fresh ids, each like ``uuid.uuid4().hex``, from one call to the OS's random
    source (a bulk enqueue would otherwise spend a sixth of its time making ids)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(byte & 0x0F | 0x40 for byte in raw[6::16])  # version 4
    raw[8::16] = bytes(byte & 0x3F | 0x80 for byte in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]


def insert_jobs(
    jobs: Sequence[NewJob],
    *,
    notify: bool = False,
    lock_timeout: float | None = None,
    written: Callable[[], None] | None = None,
) -> list[JobSnapshot]:
    """Insert ``jobs`` and return one snapshot per job, in order (``created`` says which).

    With ``notify`` the jobs are marked as waited for, including existing active ones. One
    INSERT, in autocommit, is the common case; more statements (several batches, or ids to
    resolve against existing jobs) run in one transaction, so a failure writes nothing.
    ``lock_timeout`` (seconds, PostgreSQL) bounds the wait for another transaction's
    uncommitted job with the same id. ``written`` is called once the rows are written
    (committed, outside a transaction). Waking workers and ``job_enqueued`` are the caller's
    (:func:`django_jobqueue.handles.announce`), after this returns.

    With tracing on (:mod:`.telemetry`) the write is a PRODUCER span, and each new row
    carries its context to the worker.
    """
    with telemetry.enqueue_span(jobs) as traced:
        return _insert_jobs(traced, notify=notify, lock_timeout=lock_timeout, written=written)


def _insert_jobs(
    jobs: Sequence[NewJob],
    *,
    notify: bool,
    lock_timeout: float | None,
    written: Callable[[], None] | None,
) -> list[JobSnapshot]:
    using = queue_database()
    fast = len(jobs) <= INSERT_BATCH and lock_timeout is None
    found = _insert(jobs, using) if fast else {}
    pending = [job for job in jobs if job.job_id not in found]
    if not (fast and not pending):
        with transaction.atomic(using=using):
            if lock_timeout is not None and transaction.get_connection(using).vendor == (
                "postgresql"
            ):
                with transaction.get_connection(using).cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('lock_timeout', %s, true)",
                        [f"{min(_LOCK_TIMEOUT_MAX_MS, max(1, int(lock_timeout * 1000)))}ms"],
                    )
            if not fast:
                found = _insert(jobs, using)
                pending = [job for job in jobs if job.job_id not in found]
            now = timezone.now()
            for _round in range(_REPLACE_ROUNDS):
                if not pending:
                    break
                pending = _resolve_existing(pending, found, using=using, notify=notify, now=now)
                if pending:
                    found.update(_insert(pending, using))
                    pending = [job for job in pending if job.job_id not in found]
            if pending:
                raise JobQueueError(
                    f"Could not enqueue {len(pending)} job(s) after {_REPLACE_ROUNDS} "
                    "attempts: their ids kept being replaced by concurrent producers. "
                    "Nothing was written."
                )
    if written is not None:
        written()
    return [found[job.job_id] for job in jobs]


def _insert(jobs: Sequence[NewJob], using: str) -> dict[str, JobSnapshot]:
    """Insert what is new; a snapshot for each job inserted, by job id."""
    inserted = Job.objects.using(using).insert_new(jobs)
    return {job.job_id: JobSnapshot.of_new(job) for job in jobs if job.job_id in inserted}


def _resolve_existing(
    jobs: list[NewJob],
    found: dict[str, JobSnapshot],
    *,
    using: str,
    notify: bool,
    now: datetime,
) -> list[NewJob]:
    """Hand out existing jobs; delete the expired ones and return their rows to insert again."""
    existing = {
        job.job_id: job
        for job in Job.objects.using(using)
        .select_related("outcome")
        .filter(job_id__in=[new.job_id for new in jobs])
    }
    again: list[NewJob] = []
    expired: list[int] = []
    for new in jobs:
        job = existing.get(new.job_id)
        if job is None:  # pruned or replaced between our INSERT and SELECT
            again.append(new)
        elif job.is_expired(now):
            expired.append(job.pk)
            again.append(new)
        else:
            subscribe = notify and job.status in ACTIVE and not job.notify
            if subscribe and Job.objects.using(using).subscribe(job.job_id) is None:
                job.refresh_from_db(using=using)  # it finished meanwhile
            found[new.job_id] = job.snapshot()
    if expired:
        Job.objects.using(using).filter(pk__in=expired).expired_results(now).delete()
    return again
