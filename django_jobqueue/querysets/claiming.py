"""Claiming: taking ready jobs and leasing them to a worker."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone

from ..base import CLAIM_COLUMNS, ClaimedJob, Status
from .sql import _QUEUED, _RUNNING, _SQL, SQLQuerySet, _immediate


class ClaimingQuerySet(SQLQuerySet):
    """Claims: the worker's batch claim (its selection, its plan), one job by id
    (``EAGER``), and the grouped runs that overtook an earlier job of their group."""

    def claim(
        self,
        *,
        queue: str | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
        limit_key: str | None = None,
        skip_names: Collection[str] = (),
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` ready jobs of ``queue`` (``None``: every queue) and lease them.

        Highest ``priority`` first, then enqueue order. A job with a ``group`` is taken only
        when no earlier job of its group is queued or running, so a group runs one job at a
        time, in order. PostgreSQL: one statement with ``FOR UPDATE SKIP LOCKED``, so workers
        never wait on each other. SQLite: the same selection inside ``BEGIN IMMEDIATE``, which
        serialises claimers.

        ``limit_key`` None takes only jobs without a limit; a key takes only that key's jobs
        and holds no limit itself (see :meth:`claim_limited`, or the Redis limiter that
        reserved the room before this claim). Jobs named in ``skip_names`` are left alone
        (names the worker does not know: :mod:`django_jobqueue.worker.unknown`).
        """
        sql = self._sql()
        statement, params = self._claim_statement(
            sql, queue, limit, worker, now, lease_until, limit_key, skip_names
        )
        if sql.vendor == "postgresql":
            rows = sql.execute(statement, params)
        else:
            rows = self._claim_exclusive(sql, statement, params)
        return self._claimed(sql, rows)

    @staticmethod
    def _claimed(sql: _SQL, rows: list[tuple[Any, ...]]) -> list[ClaimedJob]:
        claimed = [sql.claimed(row) for row in rows]
        claimed.sort(key=lambda job: (-job.priority, job.id))  # RETURNING has no order
        return claimed

    def _claim_statement(
        self,
        sql: _SQL,
        queue: str | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
        limit_key: str | None,
        skip_names: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        select, select_params = self._claim_select(sql, queue, limit, now, limit_key, skip_names)
        set_params = [
            sql.prep("started_at", now),
            sql.prep("lease_expires_at", lease_until),
            worker,
        ]
        set_sql = (
            f"SET status = {_RUNNING}, attempts = attempts + 1, started_at = %s, "
            "lease_expires_at = %s, worker = %s"
        )
        if sql.vendor == "postgresql":
            return (
                f"WITH picked AS ({select} FOR UPDATE SKIP LOCKED) "
                f"UPDATE {sql.table} {set_sql} FROM picked WHERE {sql.table}.id = picked.id "
                f"{sql.claim_returning(sql.table + '.')}",
                [*select_params, *set_params],
            )
        return (
            f"UPDATE {sql.table} {set_sql} WHERE id IN ({select}) {sql.claim_returning('')}",
            [*set_params, *select_params],
        )

    def _claim_select(
        self,
        sql: _SQL,
        queue: str | None,
        limit: int,
        now: datetime,
        limit_key: str | None = None,
        skip_names: Collection[str] = (),
    ) -> tuple[str, list[Any]]:
        """The claim's selection: served by ``djq_claim_any`` (no queue) or ``djq_claim_queue``
        for jobs without a limit, by ``djq_limit_queued`` for one key's jobs.

        A job of a paused queue (a ``QueuePause`` row) is never selected. The condition is an
        uncorrelated ``NOT IN (SELECT ...)``: the database reads the small pause table once
        per claim (a hashed subplan on PostgreSQL) and filters the rows the claim index
        yields, so the plan stays the index's whatever that table's statistics say (a
        correlated ``NOT EXISTS`` becomes an anti-join that PostgreSQL may plan as a hash
        join over a sequential scan). A pause thus holds from the next claim of every worker
        and costs no statement of its own."""
        queue_filter = "AND c.queue = %s " if queue is not None else ""
        if skip_names:  # after the queue's, as their parameters are
            queue_filter += f"AND c.name NOT IN ({', '.join(['%s'] * len(skip_names))}) "
        key_filter = "AND c.limit_key IS NULL " if limit_key is None else "AND c.limit_key = %s "
        pauses = self._pause_table(sql)
        select = (
            f"SELECT c.id FROM {sql.table} c "
            f"WHERE c.status = {_QUEUED} {key_filter}{queue_filter}"
            "AND (c.run_after IS NULL OR c.run_after <= %s) "
            f"AND c.queue NOT IN (SELECT p.queue FROM {pauses} p) "
            f"AND (c.{sql.group} IS NULL OR NOT EXISTS ("
            f"SELECT 1 FROM {sql.table} g WHERE g.{sql.group} = c.{sql.group} "
            f"AND g.status IN ({_QUEUED}, {_RUNNING}) "
            f"AND (g.status = {_RUNNING} OR g.id < c.id))) "
            "ORDER BY c.priority DESC, c.id LIMIT %s"
        )
        params: list[Any] = [] if limit_key is None else [limit_key]
        params += [queue] if queue is not None else []
        params += sorted(skip_names)
        return select, [*params, sql.prep("run_after", now), limit]

    @staticmethod
    def _pause_table(sql: _SQL) -> str:
        """The quoted table of ``QueuePause`` (through the app registry: no import of
        :mod:`..models` here)."""
        meta = sql.model._meta
        model = meta.apps.get_model(meta.app_label, "QueuePause")
        return str(sql.connection.ops.quote_name(model._meta.db_table))

    def paused_among(self, queues: Sequence[str]) -> set[str]:
        """Those of ``queues`` that are paused (one primary-key lookup per queue)."""
        if not queues:
            return set()
        sql = self._sql()
        rows = sql.execute(
            f"SELECT queue FROM {self._pause_table(sql)} WHERE queue IN "
            f"({', '.join(['%s'] * len(queues))})",
            list(queues),
        )
        return {str(row[0]) for row in rows}

    def explain_claim(
        self,
        *,
        queue: str | None = None,
        limit: int = 10,
        limit_key: str | None = None,
        analyze: bool = False,
    ) -> str:
        """The database's plan for a worker's claim (``EXPLAIN``), to check it uses an index:
        of the jobs without a limit, or (``limit_key``) of one key's jobs. ``analyze`` (on
        PostgreSQL) runs the selection and shows the rows and buffers each step touched."""
        sql = self._sql()
        select, params = self._claim_select(sql, queue, limit, timezone.now(), limit_key)
        prefix = "EXPLAIN QUERY PLAN " if sql.vendor == "sqlite" else "EXPLAIN "
        if analyze and sql.vendor == "postgresql":
            prefix = "EXPLAIN (ANALYZE, BUFFERS) "
        rows = sql.execute(prefix + select, params)
        return "\n".join(" ".join(str(col) for col in row) for row in rows)

    @staticmethod
    def _claim_exclusive(sql: _SQL, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with _immediate(sql):
            return sql.execute(statement, params)

    def overtaking(self, fenced: Sequence[tuple[int, int]]) -> set[int]:
        """Of the claimed grouped runs ``(id, attempts)``, those with an earlier job of their
        group still queued or running: possible on PostgreSQL when ids commit out of order.

        SQLite serialises writers, so ids there commit in order: no query, no answer.
        """
        sql = self._sql()
        if not fenced or sql.vendor == "sqlite":
            return set()
        where, params = sql.pairs(fenced)
        rows = sql.execute(
            f"SELECT c.id FROM {sql.table} c WHERE c.status = {_RUNNING} "
            f"AND {where.replace('(id, attempts)', '(c.id, c.attempts)')} AND EXISTS ("
            f"SELECT 1 FROM {sql.table} g WHERE g.{sql.group} = c.{sql.group} "
            f"AND g.status IN ({_QUEUED}, {_RUNNING}) AND g.id < c.id)",
            params,
        )
        return {row[0] for row in rows}

    def claim_job(
        self, job_id: str, *, worker: str, now: datetime, lease_until: datetime
    ) -> ClaimedJob | None:
        """Claim the queued job ``job_id`` whatever its ``run_after``, queue or group: how
        ``JOBQUEUE["EAGER"]`` runs a job it has just written. None if it is not queued."""
        claimed = self.filter(job_id=job_id, status=Status.QUEUED).update(
            status=Status.RUNNING,
            attempts=models.F("attempts") + 1,
            started_at=now,
            lease_expires_at=lease_until,
            worker=worker,
        )
        if not claimed:
            return None
        row = self.get(job_id=job_id)
        return ClaimedJob(**{column: getattr(row, column) for column in CLAIM_COLUMNS})
