"""Batches: joining one, counting its jobs' endings, and enqueueing its callbacks, each in
the transaction that writes the job or records its ending.

The counters live on the batch's row (``JobBatch``), updated by one ``UPDATE`` per batch per
ending statement, never by scanning the job table. Its callbacks are enqueued by the one
``UPDATE`` that finds the batch sealed, every job counted and ``callbacks_done`` still false
(and sets it): whichever transaction comes last (the last ending, or the seal when the jobs
finished first) does it, exactly once; their ids (``batch:<id>:on_success``) make a second
enqueue impossible anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..base import NEW_JOB_COLUMNS, NewJob, Status
from .sql import _SQL

#: Fields of a callback's :class:`NewJob` kept on the batch row (the others are chosen when
#: it is enqueued).
CALLBACK_FIELDS: tuple[str, ...] = tuple(
    name for name in NEW_JOB_COLUMNS if name not in ("job_id", "run_after", "notify", "enqueued_at")
)
#: Ids per ``UPDATE`` when jobs join a batch, but on PostgreSQL (one array, one statement):
#: as many as ``enqueue_many`` inserts per statement, well under SQLite's parameter limit.
JOIN_BATCH = 1000
#: A batch's callbacks, by the name of their field on its row.
CALLBACKS: tuple[str, ...] = ("on_success", "on_complete")


def callback_id(batch_id: str, kind: str) -> str:
    """The job id of ``batch_id``'s callback ``kind`` (one of :data:`CALLBACKS`)."""
    return f"batch:{batch_id}:{kind}"


@dataclass
class Released:
    """What an ending's followers did: queues with a job now queued (wake their workers),
    those jobs' ids (``EAGER`` runs them), and the ids of jobs now cancelled that someone
    waits for (notify them)."""

    queues: set[str] = field(default_factory=set)
    finished: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.queues or self.finished)


def _batch_model(sql: _SQL) -> Any:
    return sql.model._meta.apps.get_model(sql.model._meta.app_label, "JobBatch")


def batch_table(sql: _SQL) -> str:
    return str(sql.connection.ops.quote_name(_batch_model(sql)._meta.db_table))


def join(sql: _SQL, batch_id: str, job_ids: Sequence[str]) -> None:
    """The new jobs ``job_ids`` join the batch (in the transaction that writes them): on
    PostgreSQL one ``UPDATE`` whatever their number (the ids as one array), elsewhere one
    per :data:`JOIN_BATCH` ids."""
    chunk = len(job_ids) if sql.vendor == "postgresql" else JOIN_BATCH
    for start in range(0, len(job_ids), chunk):
        ids = list(job_ids[start : start + chunk])
        params: list[Any]
        if sql.vendor == "postgresql":
            where, params = "job_id = ANY(%s)", [ids]
        else:
            where, params = f"job_id IN ({', '.join(['%s'] * len(ids))})", ids
        sql.execute(f"UPDATE {sql.table} SET batch_id = %s WHERE {where}", [batch_id, *params])
    sql.execute(
        f"UPDATE {batch_table(sql)} SET total = total + %s WHERE id = %s", [len(job_ids), batch_id]
    )


def count_in_batches(
    sql: _SQL, endings: Sequence[tuple[str, str]], now: datetime, released: Released
) -> None:
    """Count the endings ``(batch id, status)`` on their batches' rows; enqueue the callbacks
    of a batch they finished."""
    by_batch: dict[str, Counter[str]] = {}
    for batch_id, status in endings:
        by_batch.setdefault(batch_id, Counter())[status] += 1
    table = batch_table(sql)
    for batch_id, counts in sorted(by_batch.items()):  # one lock order for every writer
        sql.execute(
            f"UPDATE {table} SET completed = completed + %s, failed = failed + %s, "
            "cancelled = cancelled + %s WHERE id = %s",
            [
                counts[Status.COMPLETED],
                counts[Status.FAILED],
                counts[Status.CANCELLED],
                batch_id,
            ],
        )
        finish(sql, batch_id, now, released)


def finish(sql: _SQL, batch_id: str, now: datetime, released: Released) -> None:
    """Enqueue the callbacks of ``batch_id`` if it is sealed, every job of it ended and they
    were not enqueued yet: ``on_complete``, and ``on_success`` if every job completed."""
    rows = sql.execute(
        f"UPDATE {batch_table(sql)} SET callbacks_done = %s, finished_at = %s WHERE id = %s "
        "AND sealed AND NOT callbacks_done AND completed + failed + cancelled >= total "
        "RETURNING completed = total, on_success, on_complete",
        [True, sql.prep("finished_at", now), batch_id],
    )
    if not rows:
        return
    succeeded, on_success, on_complete = rows[0]
    field_ = _batch_model(sql)._meta.get_field("on_success")
    callbacks = []
    specs = {"on_success": on_success if succeeded else None, "on_complete": on_complete}
    for kind in CALLBACKS:
        spec = specs[kind]
        spec = field_.from_db_value(spec, None, sql.connection) if isinstance(spec, str) else spec
        if spec is None:
            continue
        callbacks.append(
            NewJob(
                job_id=callback_id(batch_id, kind),
                run_after=None,
                notify=False,
                enqueued_at=now,
                **{name: spec[name] for name in CALLBACK_FIELDS},
            )
        )
    if callbacks:
        jobs: Any = sql.model._default_manager.using(sql.connection.alias)
        jobs.insert_new(callbacks)
        released.queues.update(job.queue for job in callbacks)
        released.queued.extend(job.job_id for job in callbacks)


def prune(sql: _SQL, limit: int) -> int:
    """Delete at most ``limit`` batch rows no longer needed; return how many.

    A batch's row is kept until its callbacks were enqueued (``callbacks_done``) and then
    as long as any of its jobs or callback jobs exists: it goes with the last of them, so
    it lives as long as the longest ``result_ttl`` among them (``get_batch()`` answers
    while any of its jobs can still be looked at), never before its callbacks ran.
    """
    table = batch_table(sql)
    callbacks = ", ".join(["%s || b.id || %s"] * len(CALLBACKS))
    params: list[Any] = []
    for kind in CALLBACKS:  # callback_id(b.id, kind) in SQL: the parts around the id
        params += callback_id("\0", kind).split("\0")
    doomed = (
        f"SELECT b.id FROM {table} b WHERE b.callbacks_done "
        f"AND NOT EXISTS (SELECT 1 FROM {sql.table} j WHERE j.batch_id = b.id) "
        f"AND NOT EXISTS (SELECT 1 FROM {sql.table} j WHERE j.job_id IN ({callbacks})) "
        "ORDER BY b.finished_at LIMIT %s"
    )
    with sql.connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id IN ({doomed})", [*params, limit])
        return int(cursor.rowcount)
