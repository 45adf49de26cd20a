"""Claiming under a limit per key (``JOBQUEUE["LIMITS"]``), held in the database."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models, transaction

from ..base import ClaimedJob
from .claiming import ClaimingQuerySet
from .sql import _QUEUED, _RUNNING, _immediate

#: The first key of the advisory locks that serialise the claims of one limit key.
LOCK_SPACE = 0x646A71  # "djq"


class LimitedQuerySet(ClaimingQuerySet):
    """The queued limit keys, and the claim of one key's jobs within its limits."""

    def queued_limit_keys(self, *, after: str, count: int) -> list[str]:
        """Up to ``count`` distinct limit keys of queued jobs, in key order, after ``after``.

        A skip scan of ``djq_limit_queued`` (a recursive CTE: one index probe per key), so a
        key with a million queued jobs costs what a key with one costs.
        """
        sql = self._sql()
        probe = (
            f"SELECT limit_key FROM {sql.table} WHERE status = {_QUEUED} "
            "AND limit_key IS NOT NULL AND limit_key > {key} ORDER BY limit_key LIMIT 1"
        )
        rows = sql.execute(
            "WITH RECURSIVE keys(k) AS ("
            f"SELECT ({probe.format(key='%s')}) UNION ALL "
            f"SELECT ({probe.format(key='keys.k')}) FROM keys WHERE keys.k IS NOT NULL) "
            "SELECT k FROM keys WHERE k IS NOT NULL LIMIT %s",
            [after, count],
        )
        return [str(row[0]) for row in rows]

    def claim_limited(
        self,
        limit_key: str,
        *,
        concurrency: int | None,
        rate: tuple[int, float] | None,
        queue: str | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` jobs of ``limit_key``, holding its limits in the database.

        One transaction per key: claimers of a key take turns (a transaction-scoped advisory
        lock on PostgreSQL, taken only if free: a busy key claims nothing this time;
        ``BEGIN IMMEDIATE`` on SQLite), count the key's running jobs
        (``djq_limit_running``) and its starts within the last ``rate`` period
        (:class:`LimitStart` rows, a sliding window on the database's clock), claim what
        the limits leave room for and record those starts. Two workers claiming the same key
        at once therefore never exceed ``concurrency``. A job of a crashed worker counts until
        its lease expires and it is requeued.
        """
        sql = self._sql()
        starts_model = self._limit_start_model()
        starts = sql.connection.ops.quote_name(starts_model._meta.db_table)
        running_sql = (
            f"SELECT count(*) FROM {sql.table} WHERE status = {_RUNNING} AND limit_key = %s"
        )
        window = rate[1] if rate is not None else 0.0
        with transaction.atomic(using=self.db) if sql.vendor == "postgresql" else _immediate(sql):
            if sql.vendor == "postgresql":
                # Never wait for the lock: a claimer paused or cut off inside this
                # transaction would stall every other worker's loop (and their leases).
                # Whoever holds it claims for the key; the others try again next pass.
                (locked,) = sql.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", [LOCK_SPACE, limit_key]
                )[0]
                if not locked:
                    return []
                (clock, running, started) = sql.execute(
                    f"SELECT clock_timestamp(), ({running_sql}), (SELECT count(*) FROM {starts} "
                    "WHERE key = %s AND started_at > clock_timestamp() "
                    "- make_interval(secs => %s))",
                    [limit_key, limit_key, window],
                )[0]
            else:
                clock = now
                (running, started) = sql.execute(
                    f"SELECT ({running_sql}), (SELECT count(*) FROM {starts} "
                    "WHERE key = %s AND started_at > %s)",
                    [limit_key, limit_key, sql.prep("run_after", now - timedelta(seconds=window))],
                )[0]
            room = limit
            if concurrency is not None:
                room = min(room, concurrency - int(running))
            if rate is not None:
                room = min(room, rate[0] - int(started))
                sql.execute(
                    f"DELETE FROM {starts} WHERE key = %s AND started_at <= %s",
                    [limit_key, sql.prep("run_after", clock - timedelta(seconds=window))],
                )
            if room <= 0:
                return []
            if sql.vendor == "postgresql":
                # The lease starts now on the database's clock, not when this claim began.
                now, lease_until = clock, clock + (lease_until - now)
            statement, params = self._claim_statement(
                sql, queue, room, worker, now, lease_until, limit_key
            )
            claimed = self._claimed(sql, sql.execute(statement, params))
            if rate is not None and claimed:
                sql.execute(
                    f"INSERT INTO {starts} (key, started_at) VALUES "
                    + ", ".join(["(%s, %s)"] * len(claimed)),
                    [v for _ in claimed for v in (limit_key, sql.prep("run_after", clock))],
                )
        return claimed

    def prune_limit_starts(self, before: datetime, *, limit: int) -> int:
        """Delete at most ``limit`` recorded starts (:class:`LimitStart`) from ``before`` or
        earlier; return how many. A key's next claim deletes its own old starts, but a key
        never claimed again (a tenant gone, a limit removed from the settings) keeps them:
        the worker's upkeep calls this with ``before`` one :data:`LONGEST_RATE_PERIOD` ago."""
        sql = self._sql()
        starts = sql.connection.ops.quote_name(self._limit_start_model()._meta.db_table)
        with sql.connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {starts} WHERE id IN "
                f"(SELECT id FROM {starts} WHERE started_at <= %s LIMIT %s)",
                [sql.prep("run_after", before), limit],
            )
            return int(cursor.rowcount)

    def _limit_start_model(self) -> type[models.Model]:
        """``LimitStart``, found through the app registry: no import of :mod:`.models` here."""
        meta = self.model._meta
        model: type[models.Model] = meta.apps.get_model(meta.app_label, "LimitStart")
        return model
