"""Upkeep: pruning finished jobs past their ``result_ttl``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction

from ..base import ACTIVE, FINISHED
from . import batches
from .dependencies import dependency_table
from .sql import SQLQuerySet

#: Finished jobs deleted per pruning statement (and transaction): short enough that no lock
#: is held for long, large enough that a worker deletes faster than the queue drains.
PRUNE_BATCH = 1000


class UpkeepQuerySet(SQLQuerySet):
    """Deleting what is no longer needed."""

    def prune(
        self,
        now: datetime,
        *,
        limit: int = PRUNE_BATCH,
        finished_before: datetime | None = None,
    ) -> int:
        """Delete at most ``limit`` finished jobs past their ``result_ttl`` (``expires_at``
        at or before ``now``), with their results, in one short transaction; return how many.

        ``finished_before``: instead, finished jobs that finished at or before then, whatever
        their ``result_ttl`` (``manage.py jobqueue prune --older-than``). A job with one more
        run to queue (``rerun``) is kept until that run is queued.

        The oldest expiries first, read through the ``djq_expiry`` index. On PostgreSQL one
        statement that skips rows another transaction holds (a requeue, a deduplicating
        enqueue), so concurrent workers prune different rows and nobody waits; on SQLite a
        read, then (only if it found rows) both deletes in one transaction. Callers repeat it
        while it returns ``limit``.
        """
        sql = self._sql()
        finished = ", ".join(["%s"] * len(FINISHED))
        if finished_before is None:
            condition, value = "expires_at <= %s", sql.prep("expires_at", now)
        else:
            condition, value = "finished_at <= %s", sql.prep("finished_at", finished_before)
        deps = dependency_table(sql)
        active = ", ".join(["%s"] * len(ACTIVE))
        # A parent is kept while a child of it has not finished (its parent_results).
        where = (
            f"status IN ({finished}) AND {condition} AND rerun IS NULL "
            f"AND NOT (has_children AND EXISTS (SELECT 1 FROM {deps} d "
            f"JOIN {sql.table} c ON c.id = d.child_id "
            f"WHERE d.parent_job_id = {sql.table}.job_id AND c.status IN ({active})))"
        )
        params: list[Any] = [*FINISHED, value, *ACTIVE]
        results = self._result_model()._meta.db_table
        if sql.vendor == "postgresql":
            rows = sql.execute(
                f"WITH doomed AS (SELECT id FROM {sql.table} WHERE {where} "
                "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED), "
                f"gone AS (DELETE FROM {sql.table} j USING doomed WHERE j.id = doomed.id "
                "RETURNING j.id), "
                f"stored AS (DELETE FROM {results} r USING gone WHERE r.job_id = gone.id), "
                f"links AS (DELETE FROM {deps} d USING gone WHERE d.child_id = gone.id) "
                "SELECT count(*) FROM gone",
                [*params, limit],
            )
            return int(rows[0][0])
        ids = [
            row[0]
            for row in sql.execute(
                f"SELECT id FROM {sql.table} WHERE {where} ORDER BY expires_at LIMIT %s",
                [*params, limit],
            )
        ]
        if not ids:
            return 0
        chosen = f"id IN ({', '.join(['%s'] * len(ids))}) AND {where}"
        with transaction.atomic(using=self.db), sql.connection.cursor() as cursor:
            # Results first, chosen again under the write lock: what is still expired.
            cursor.execute(
                f"DELETE FROM {results} WHERE job_id IN "
                f"(SELECT id FROM {sql.table} WHERE {chosen})",
                [*ids, *params],
            )
            cursor.execute(
                f"DELETE FROM {deps} WHERE child_id IN (SELECT id FROM {sql.table} WHERE {chosen})",
                [*ids, *params],
            )
            cursor.execute(f"DELETE FROM {sql.table} WHERE {chosen}", [*ids, *params])
            return int(cursor.rowcount)

    def prune_batches(self, *, limit: int = PRUNE_BATCH) -> int:
        """Delete at most ``limit`` batch rows whose callbacks ran and whose jobs and
        callback jobs were all pruned (:func:`.batches.prune`); return how many."""
        with transaction.atomic(using=self.db):
            return batches.prune(self._sql(), limit)
