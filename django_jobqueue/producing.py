"""Putting jobs in the queue: one INSERT per batch, deduplicated by job id.

The deduplication table of the design, enqueue side: an id that is queued or running, or
finished within its ``result_ttl``, is not run again (the caller gets a handle to it); an id
finished past its ``result_ttl`` is replaced by a new run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from django.db import router, transaction
from django.utils import timezone

from . import signals
from .exceptions import JobQueueError
from .handles import JobHandle
from .models import ACTIVE, Job
from .querysets import INSERT_BATCH

_REPLACE_ROUNDS = 5


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


def enqueue_rows(
    rows: Sequence[dict[str, Any]],
    *,
    notify: bool = False,
    lock_timeout: float | None = None,
    written: Callable[[], None] | None = None,
) -> list[JobHandle]:
    """Insert ``rows`` (as built by ``JobFunction``) and return one handle per row, in order.

    With ``notify`` the jobs are marked as waited for, including existing active ones.
    Workers of the jobs' queues are woken when the caller's transaction commits (at once
    outside a transaction). One INSERT, in autocommit, is the common case; more statements
    (several batches, or ids to resolve against existing jobs) run in one transaction, so a
    failure writes nothing. ``lock_timeout`` (seconds, PostgreSQL) bounds the wait for
    another transaction's uncommitted job with the same id. ``written`` is called once the
    rows are written (committed, outside a transaction), before workers are woken and
    ``job_enqueued`` is sent.
    """
    using = router.db_for_write(Job)
    fast = len(rows) <= INSERT_BATCH and lock_timeout is None
    handles = _insert(rows, using) if fast else {}
    pending = [row for row in rows if row["job_id"] not in handles]
    if fast and not pending:
        return _done(rows, handles, using, written)
    with transaction.atomic(using=using):
        if lock_timeout is not None and transaction.get_connection(using).vendor == "postgresql":
            with transaction.get_connection(using).cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    [f"{max(1, int(lock_timeout * 1000))}ms"],
                )
        if not fast:
            handles = _insert(rows, using)
            pending = [row for row in rows if row["job_id"] not in handles]
        now = timezone.now()
        for _round in range(_REPLACE_ROUNDS):
            if not pending:
                break
            pending = _resolve_existing(pending, handles, using=using, notify=notify, now=now)
            if pending:
                handles.update(_insert(pending, using))
                pending = [row for row in pending if row["job_id"] not in handles]
        if pending:
            raise JobQueueError(
                f"Could not enqueue {len(pending)} job(s) after {_REPLACE_ROUNDS} attempts: "
                "their ids kept being replaced by concurrent producers. Nothing was written."
            )
    return _done(rows, handles, using, written)


def _insert(rows: Sequence[dict[str, Any]], using: str) -> dict[str, JobHandle]:
    """Insert what is new; a handle for each row inserted, by job id."""
    inserted = Job.objects.using(using).insert_new(rows)
    return {
        row["job_id"]: JobHandle(
            row["job_id"],
            name=row["name"],
            queue=row["queue"],
            status="queued",
            created=True,
            enqueued_at=row["enqueued_at"],
        )
        for row in rows
        if row["job_id"] in inserted
    }


def _done(
    rows: Sequence[dict[str, Any]],
    handles: dict[str, JobHandle],
    using: str,
    written: Callable[[], None] | None,
) -> list[JobHandle]:
    if written is not None:
        written()
    queues = {row["queue"] for row in rows if handles[row["job_id"]].created}
    if queues:
        transaction.on_commit(lambda: _after_commit(queues), using=using)
    if signals.job_enqueued.has_listeners():
        for row in rows:
            handle = handles[row["job_id"]]
            if handle.created:
                signals.send_robust(signals.job_enqueued, sender=Job, handle=handle)
    return [handles[row["job_id"]] for row in rows]


def _resolve_existing(
    rows: list[dict[str, Any]],
    handles: dict[str, JobHandle],
    *,
    using: str,
    notify: bool,
    now: Any,
) -> list[dict[str, Any]]:
    """Hand out existing jobs; delete the expired ones and return their rows to insert again."""
    existing = {
        job.job_id: job
        for job in Job.objects.using(using)
        .select_related("outcome")
        .filter(job_id__in=[row["job_id"] for row in rows])
    }
    again: list[dict[str, Any]] = []
    expired: list[int] = []
    for row in rows:
        job = existing.get(row["job_id"])
        if job is None:  # pruned or replaced between our INSERT and SELECT
            again.append(row)
        elif job.is_expired(now):
            expired.append(job.pk)
            again.append(row)
        else:
            subscribe = notify and job.status in ACTIVE and not job.notify
            if subscribe and not Job.objects.using(using).subscribe(job.job_id):
                job.refresh_from_db(using=using)  # it finished meanwhile
            handles[row["job_id"]] = JobHandle.from_job(job)
    if expired:
        Job.objects.using(using).filter(pk__in=expired).expired_results(now).delete()
    return again


def _after_commit(queues: set[str]) -> None:
    from .notifications import hub

    hub().wake_workers(queues)
