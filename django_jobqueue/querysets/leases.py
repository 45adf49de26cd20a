"""Writes to running runs: renewing their leases, storing progress, handing them back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .sql import _QUEUED, _RUNNING, SQLQuerySet


class Renewed(set[int]):
    """What :meth:`JobQuerySet.renew_leases` renewed: the ids still ours, and in
    ``cancel_requested`` those someone asked to stop."""

    def __init__(self, rows: Sequence[tuple[Any, ...]] = ()) -> None:
        super().__init__(row[0] for row in rows)
        self.cancel_requested: set[int] = {row[0] for row in rows if row[1]}


class LeasesQuerySet(SQLQuerySet):
    """Fenced writes while a run is ours: lease renewals, progress, releases."""

    def release(self, fenced: Sequence[tuple[int, int]]) -> int:
        """Hand claimed-but-never-started runs back to the queue, undoing their attempt."""
        if not fenced:
            return 0
        sql = self._sql()
        where, params = sql.pairs(fenced)
        return len(
            sql.execute(
                f"UPDATE {sql.table} SET status = {_QUEUED}, attempts = attempts - 1, "
                "lease_expires_at = NULL, started_at = NULL, worker = '' "
                f"WHERE status = {_RUNNING} AND {where} RETURNING id",
                params,
            )
        )

    def give_back(
        self, fenced: Sequence[tuple[int, int]], *, run_after: datetime, enqueued_after: datetime
    ) -> set[int]:
        """Hand claimed-but-never-started runs back to the queue like :meth:`release` (their
        attempt undone), to run no earlier than ``run_after``; only those of jobs enqueued
        after ``enqueued_after`` and that nobody asked to stop. Return the ids handed back."""
        if not fenced:
            return set()
        sql = self._sql()
        where, params = sql.pairs(fenced)
        rows = sql.execute(
            f"UPDATE {sql.table} SET status = {_QUEUED}, attempts = attempts - 1, "
            "lease_expires_at = NULL, started_at = NULL, worker = '', run_after = %s "
            f"WHERE status = {_RUNNING} AND {where} AND enqueued_at > %s "
            "AND cancel_requested = %s RETURNING id",
            [
                sql.prep("run_after", run_after),
                *params,
                sql.prep("enqueued_at", enqueued_after),
                False,
            ],
        )
        return {row[0] for row in rows}

    def renew_leases(self, fenced: Sequence[tuple[int, int]], lease_until: datetime) -> Renewed:
        """Extend the leases of the runs ``(id, attempts)``; return the ids still ours (and,
        in ``cancel_requested``, those someone asked to stop: the heartbeat is how a worker
        without a channel layer learns of a cancel)."""
        if not fenced:
            return Renewed()
        sql = self._sql()
        where, params = sql.pairs(fenced)
        rows = sql.execute(
            f"UPDATE {sql.table} SET lease_expires_at = %s WHERE status = {_RUNNING} AND {where} "
            "RETURNING id, cancel_requested",
            [sql.prep("lease_expires_at", lease_until), *params],
        )
        return Renewed(rows)

    def set_progress(self, items: Sequence[tuple[tuple[int, int], Any]]) -> int:
        """Store the progress of running runs: ``[((id, attempts), value), ...]`` in one
        statement, fenced; return how many rows took it."""
        if not items:
            return 0
        sql = self._sql()
        cast = "::jsonb" if sql.vendor == "postgresql" else ""
        cases = " ".join([f"WHEN %s THEN %s{cast}"] * len(items))
        case_params: list[Any] = []
        for (pk, _attempts), value in items:
            case_params += [pk, sql.prep("progress", value)]
        where, params = sql.pairs([fence for fence, _ in items])
        rows = sql.execute(
            f"UPDATE {sql.table} SET progress = CASE id {cases} ELSE progress END "
            f"WHERE status = {_RUNNING} AND {where} RETURNING id",
            [*case_params, *params],
        )
        return len(rows)
