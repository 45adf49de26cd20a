"""Claiming under limits per key (``JOBQUEUE["LIMITS"]``), held in the database: a job with
several keys holds them all at once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import models, transaction

from ..base import ClaimedJob
from ..limits import SEPARATOR
from .claiming import ClaimingQuerySet
from .sql import _QUEUED, _RUNNING, _immediate

#: The first key of the advisory locks that serialise the claims of one limit key.
LOCK_SPACE = 0x646A71  # "djq"


class Hold(NamedTuple):
    """One key a claim holds, with its limits: at most ``concurrency`` running, at most
    ``rate`` = (count, seconds) starts per period; None: no such limit."""

    key: str
    concurrency: int | None
    rate: tuple[int, float] | None


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
        holds: Sequence[Hold],
        queue: str | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` jobs whose ``limit_key`` is ``limit_key`` (one key, or
        several in their stored form), holding every key of ``holds`` in the database.

        One transaction: claimers of a key take turns (a transaction-scoped advisory lock
        per key on PostgreSQL, taken in the keys' canonical order and only if free: a busy
        key claims nothing this time, and the locks taken so far go with the transaction,
        so two workers never wait on each other; ``BEGIN IMMEDIATE`` on SQLite), count each
        key's running jobs (every running job that has the key, alone or among others) and
        its starts within the last ``rate`` period (:class:`LimitStart` rows, a sliding
        window on the database's clock), claim what the tightest key leaves room for (all
        or nothing: no key is held for a job another key refuses) and record those starts
        for every key with a rate. Two workers claiming the same key at once therefore
        never exceed its ``concurrency``. A job of a crashed worker counts until its lease
        expires and it is requeued.
        """
        sql = self._sql()
        starts_model = self._limit_start_model()
        starts = sql.connection.ops.quote_name(starts_model._meta.db_table)
        find = "strpos" if sql.vendor == "postgresql" else "instr"
        # A running job has the key when "\n<key>\n" is in "\n<its keys>\n".
        running_sql = (
            f"SELECT count(*) FROM {sql.table} WHERE status = {_RUNNING} "
            f"AND limit_key IS NOT NULL AND {find}(%s || limit_key || %s, %s) > 0"
        )
        holds = sorted(holds)
        postgres = sql.vendor == "postgresql"
        with transaction.atomic(using=self.db) if postgres else _immediate(sql):
            if postgres:
                # Never wait for a lock: a claimer paused or cut off inside this
                # transaction would stall every other worker's loop (and their leases).
                # Whoever holds it claims for the key; the others try again next pass.
                for hold in holds:
                    (locked,) = sql.execute(
                        "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                        [LOCK_SPACE, hold.key],
                    )[0]
                    if not locked:
                        return []
                (clock,) = sql.execute("SELECT clock_timestamp()", [])[0]
            else:
                clock = now
            room = limit
            for hold in holds:
                window = hold.rate[1] if hold.rate is not None else 0.0
                (running, started) = sql.execute(
                    f"SELECT ({running_sql}), (SELECT count(*) FROM {starts} "
                    "WHERE key = %s AND started_at > %s)",
                    [
                        SEPARATOR,
                        SEPARATOR,
                        f"{SEPARATOR}{hold.key}{SEPARATOR}",
                        hold.key,
                        sql.prep("run_after", clock - timedelta(seconds=window)),
                    ],
                )[0]
                if hold.concurrency is not None:
                    room = min(room, hold.concurrency - int(running))
                if hold.rate is not None:
                    room = min(room, hold.rate[0] - int(started))
                    sql.execute(
                        f"DELETE FROM {starts} WHERE key = %s AND started_at <= %s",
                        [hold.key, sql.prep("run_after", clock - timedelta(seconds=window))],
                    )
            if room <= 0:
                return []
            if postgres:
                # The lease starts now on the database's clock, not when this claim began.
                now, lease_until = clock, clock + (lease_until - now)
            statement, params = self._claim_statement(
                sql, queue, room, worker, now, lease_until, limit_key
            )
            claimed = self._claimed(sql, sql.execute(statement, params))
            rated = [hold.key for hold in holds if hold.rate is not None]
            if rated and claimed:
                sql.execute(
                    f"INSERT INTO {starts} (key, started_at) VALUES "
                    + ", ".join(["(%s, %s)"] * (len(claimed) * len(rated))),
                    [
                        v
                        for key in rated
                        for _ in claimed
                        for v in (key, sql.prep("run_after", clock))
                    ],
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
