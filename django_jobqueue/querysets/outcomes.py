"""Outcomes: completing, retrying, failing for good (dead letter) and the end of a run that
was asked to stop. Cancelling a job that waits is :mod:`.cancelling`'s."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from .. import conf
from ..base import DEAD_LETTER_FIELDS, FINISHED, ClaimedJob, Status
from .batches import Released
from .dependencies import (
    ENDED_COLUMNS,
    FOLLOWED,
    PLAIN,
    Ended,
    ended,
    release_children,
)
from .sql import (
    _CANCELLED,
    _COMPLETED,
    _DONE_STATUS,
    _QUEUED,
    _RUNNING,
    _SQL,
    CANCELLED_ERROR,
    DEFAULT_EXCEPTION_PATH,
    AppendAttempt,
    SQLQuerySet,
    _append_attempt_sql,
)

#: ``expires_at`` of a job ending with an outcome (two parameters: the expiry by
#: ``RESULT_TTL``'s time for that outcome, and by the job's own ``result_ttl``): a job with
#: ``ttl_by_outcome`` is kept for its outcome's time (see :func:`_kept_until`).
_BY_OUTCOME = "CASE WHEN ttl_by_outcome THEN %s ELSE %s END"


def _kept_until(sql: _SQL, outcome: str, now: datetime, result_ttl: int) -> list[Any]:
    """The parameters of :data:`_BY_OUTCOME` for a job that ends ``outcome`` at ``now``."""
    return [
        sql.prep("expires_at", now + timedelta(seconds=conf.result_ttl(outcome))),
        sql.prep("expires_at", now + timedelta(seconds=result_ttl)),
    ]


class Completed(dict[int, bool]):
    """What :meth:`JobQuerySet.complete` wrote: ``{id: notify}`` of the runs still ours, and
    in ``cancelled`` the ids that ended ``cancelled`` instead (a cancel request was recorded
    on the row before the completion); ``released``: what their children did (workflows)."""

    def __init__(self, rows: Sequence[tuple[Any, ...]] = ()) -> None:
        super().__init__((row[0], bool(row[1])) for row in rows)
        self.cancelled: set[int] = {row[0] for row in rows if row[2] == Status.CANCELLED}
        #: The runs recorded whose ending has followers (children, a batch).
        self.parents: list[Ended] = [ended(row) for row in rows if row[3] or row[5]]
        self.released = Released()

    def merge(self, other: Completed) -> Completed:
        self.update(other)
        self.cancelled |= other.cancelled
        self.parents += other.parents
        self.released = other.released
        return self


def _completion(
    sql: _SQL,
    fenced: Sequence[tuple[int, int]],
    now: datetime,
    expires_at: datetime,
    *,
    childless: bool,
) -> tuple[str, list[Any]]:
    """The UPDATE that completes the runs ``fenced`` (``RETURNING id, notify, status,
    has_children, job_id``): :meth:`~OutcomesQuerySet.complete`'s statement, and the first
    step of :meth:`~OutcomesQuerySet.complete_with_results`' on PostgreSQL. ``childless``:
    only rows without children (outside a transaction, see :meth:`_recording`).
    ``expires_at`` is the completed runs'; a run that ends ``cancelled`` with
    ``ttl_by_outcome`` is kept for ``RESULT_TTL``'s cancelled time."""
    where, params = sql.pairs(fenced)
    cancelled = now + timedelta(seconds=conf.result_ttl(Status.CANCELLED.value))
    return (
        f"UPDATE {sql.table} SET status = {_DONE_STATUS}, finished_at = %s, expires_at = "
        "CASE WHEN cancel_requested AND ttl_by_outcome THEN %s ELSE %s END, "
        "lease_expires_at = NULL, last_error = CASE WHEN cancel_requested THEN %s "
        f"ELSE last_error END WHERE status = {_RUNNING} AND {where} "
        + (f"AND {PLAIN} " if childless else "")
        + f"RETURNING id, notify, status, {ENDED_COLUMNS}",
        [
            sql.prep("finished_at", now),
            sql.prep("expires_at", cancelled),
            sql.prep("expires_at", expires_at),
            CANCELLED_ERROR,
            *params,
        ],
    )


class OutcomesQuerySet(SQLQuerySet):
    """The end of a run, fenced on ``(id, attempts)``: complete, retry, cancelled, dead letter."""

    def complete(
        self, fenced: Sequence[tuple[int, int]], *, now: datetime, expires_at: datetime
    ) -> Completed:
        """Mark the runs ``(id, attempts)`` completed; return ``{id: notify}`` of those still ours.

        A run whose lease was taken over (its ``attempts`` moved on, or the job is no longer
        running) is left alone and missing from the answer. ``last_error`` is kept, so a job
        that completed on a retry still shows why the earlier attempt failed. A run someone
        asked to stop (``cancel_requested``) ends ``cancelled`` instead, in the same
        statement, so a cancel request that lands between the job's return and this write
        wins; its ids are in the answer's ``cancelled``.
        """
        if not fenced:
            return Completed()
        sql = self._sql()
        return self._recording(
            fenced,
            now,
            lambda runs, childless: Completed(
                sql.execute(*_completion(sql, runs, now, expires_at, childless=childless))
            ),
        )

    def _recording(
        self,
        fenced: Sequence[tuple[int, int]],
        now: datetime,
        write: Callable[[Sequence[tuple[int, int]], bool], Completed],
    ) -> Completed:
        """Record completions with ``write(runs, childless)``, releasing the children of the
        parents among them in the same transaction (:func:`.dependencies.release_children`).

        Inside a transaction (the short path's, an ``atomic=True`` job's, SQLite's result
        write) the children are released in it. Outside one, the completion of a job
        without children stays one statement in autocommit (``childless``: the rows with
        children are left out), and only the runs it did not record are written again,
        with their children, in a transaction: a job with children, or a run no longer
        ours (which matches nothing again).
        """
        sql = self._sql()
        if not sql.connection.in_atomic_block:
            mine = write(fenced, True)
            rest = [pair for pair in fenced if pair[0] not in mine]
            if not rest:
                return mine
            with transaction.atomic(using=self.db):
                return mine.merge(self._recording(rest, now, write))
        mine = write(fenced, False)
        if mine.parents:
            mine.released = release_children(sql, mine.parents, now)
        return mine

    def complete_with_results(
        self,
        fenced: Sequence[tuple[int, int]],
        results: dict[int, Any],
        *,
        now: datetime,
        expires_at: datetime,
    ) -> Completed:
        """:meth:`complete`, storing ``results`` (``{id: value}``) of the runs still ours
        (not of those that ended ``cancelled``).

        PostgreSQL: one statement (the UPDATE and the INSERT of the results in one CTE), so
        one round trip. SQLite: both statements in one transaction.
        """
        result_model = self._result_model()
        sql = self._sql()
        if sql.vendor != "postgresql":
            with transaction.atomic(using=self.db):
                mine = self.complete(fenced, now=now, expires_at=expires_at)
                result_model._default_manager.using(self.db).bulk_create(
                    result_model(job_id=pk, result=value)
                    for pk, value in results.items()
                    if pk in mine and pk not in mine.cancelled
                )
            return mine
        result_table = result_model._meta.db_table
        result_field: Any = result_model._meta.get_field("result")
        values = ", ".join(["(%s::bigint, %s::jsonb)"] * len(results))
        value_params: list[Any] = []
        for pk, value in results.items():
            value_params += [pk, result_field.get_db_prep_save(value, sql.connection)]

        def write(runs: Sequence[tuple[int, int]], childless: bool) -> Completed:
            update, params = _completion(sql, runs, now, expires_at, childless=childless)
            return Completed(
                sql.execute(
                    f"WITH done AS ({update}), stored AS (INSERT INTO {result_table} "
                    "(job_id, result, error, traceback) SELECT v.id, v.result, '', '' "
                    f"FROM (VALUES {values}) AS v(id, result) JOIN done ON done.id = v.id "
                    f"AND done.status = {_COMPLETED}) "
                    f"SELECT id, notify, status, {ENDED_COLUMNS} FROM done",
                    [*params, *value_params],
                )
            )

        return self._recording(fenced, now, write)

    def retry(
        self,
        job_id: int,
        attempts: int,
        *,
        run_after: datetime,
        error: str,
        lease_expired_before: datetime | None = None,
        now: datetime | None = None,
        result_ttl: int = 0,
        exception_path: str = DEFAULT_EXCEPTION_PATH,
        traceback: str = "",
    ) -> tuple[str, bool] | None:
        """Put a failed run back in the queue for a later attempt; return its new status
        (``"queued"``) and whether someone waits for it, or None if the run is not ours.

        A run someone asked to stop (``cancel_requested``) ends ``cancelled`` instead (its
        outcome kept ``result_ttl`` seconds from ``now``, or ``RESULT_TTL``'s cancelled time
        with ``ttl_by_outcome``), in the same statement.
        ``lease_expired_before``: only if the run's lease expired before then (reaping a run
        whose worker stopped renewing it, never one that renewed it meanwhile).
        ``exception_path`` and ``traceback`` go to a task's ``attempt_log`` (in the same
        statement; an ``@job`` job keeps a NULL log).
        """
        sql = self._sql()
        now = now or timezone.now()
        lease = ""
        params: list[Any] = [
            sql.prep("run_after", run_after),
            sql.prep("finished_at", now),
            *_kept_until(sql, Status.CANCELLED.value, now, result_ttl),
            CANCELLED_ERROR,
            error,
            exception_path,
            traceback or error,
            job_id,
            attempts,
        ]
        if lease_expired_before is not None:
            lease = "AND lease_expires_at < %s "
            params.append(sql.prep("lease_expires_at", lease_expired_before))
        statement = (
            f"UPDATE {sql.table} SET "
            f"status = CASE WHEN cancel_requested THEN {_CANCELLED} ELSE {_QUEUED} END, "
            "run_after = CASE WHEN cancel_requested THEN run_after ELSE %s END, "
            "finished_at = CASE WHEN cancel_requested THEN %s ELSE finished_at END, "
            f"expires_at = CASE WHEN cancel_requested THEN {_BY_OUTCOME} ELSE expires_at END, "
            "last_error = CASE WHEN cancel_requested THEN %s ELSE %s END, "
            f"attempt_log = {_append_attempt_sql(sql.vendor)}, "
            "lease_expires_at = NULL, worker = '' "
            f"WHERE id = %s AND attempts = %s AND status = {_RUNNING} {lease}"
        )
        # A retry that ends cancelled (a cancel request) is an ending: see _ending().
        rows = self._ending(
            lambda childless: sql.execute(
                statement
                + (f"AND NOT (cancel_requested AND {FOLLOWED}) " if childless else "")
                + f"RETURNING status, notify, {ENDED_COLUMNS}",
                params,
            ),
            now,
        )
        return (str(rows[0][0]), bool(rows[0][1])) if rows else None

    def _ending(
        self, write: Callable[[bool], list[tuple[Any, ...]]], now: datetime
    ) -> list[tuple[Any, ...]]:
        """Record one run's ending with ``write(childless)`` (``RETURNING status, notify,
        has_children, job_id``), releasing its children in the same transaction, as
        :meth:`_recording` does for completions: outside a transaction a run without
        children is one statement in autocommit, and one that ``childless`` left out is
        written again, with its children, in a transaction."""
        sql = self._sql()
        if not sql.connection.in_atomic_block:
            rows = write(True)
            if rows:
                return rows
        with transaction.atomic(using=self.db):
            rows = write(False)
            endings = [ended((0, row[1], row[0], *row[2:])) for row in rows if row[0] in FINISHED]
            if any(end.followed for end in endings):
                release_children(sql, endings, now)
            return rows

    def finish_cancelled(
        self,
        job_id: int,
        attempts: int,
        *,
        now: datetime,
        result_ttl: int,
        lease_expired_before: datetime | None = None,
    ) -> bool | None:
        """End the run ``(id, attempts)`` of a job someone asked to stop as ``cancelled``;
        return whether someone waits for it, or None if the run is not ours (or, with
        ``lease_expired_before``, its lease did not expire before then)."""
        sql = self._sql()
        found = self._ending(
            lambda childless: sql.execute(
                f"UPDATE {sql.table} SET status = {_CANCELLED}, finished_at = %s, "
                f"expires_at = {_BY_OUTCOME}, lease_expires_at = NULL, last_error = %s "
                f"WHERE id = %s AND attempts = %s AND status = {_RUNNING} AND cancel_requested"
                + (" AND lease_expires_at < %s" if lease_expired_before is not None else "")
                + (f" AND {PLAIN}" if childless else "")
                + f" RETURNING status, notify, {ENDED_COLUMNS}",
                [
                    sql.prep("finished_at", now),
                    *_kept_until(sql, Status.CANCELLED.value, now, result_ttl),
                    CANCELLED_ERROR,
                    job_id,
                    attempts,
                    *(
                        [sql.prep("lease_expires_at", lease_expired_before)]
                        if lease_expired_before is not None
                        else []
                    ),
                ],
            ),
            now,
        )
        return bool(found[0][1]) if found else None

    def dead_letter(
        self,
        job: ClaimedJob,
        error: str,
        trace: str,
        *,
        now: datetime,
        lease_expired_before: datetime | None = None,
        exception_path: str = DEFAULT_EXCEPTION_PATH,
    ) -> tuple[Any, bool] | None:
        """Fail the run ``job.fence`` for good, in one transaction: status failed, its result
        row (error and traceback), a ``DeadLetter`` row (the job's
        :data:`~django_jobqueue.base.DEAD_LETTER_FIELDS`, its attempts and the error).

        Returns None if the run is no longer ours (fenced; with ``lease_expired_before``, also
        if its lease did not expire before then) or someone asked it to stop (it ends
        through :meth:`finish_cancelled` then), else ``(dead letter, notify)``: whether
        someone waits for the job.
        """
        result_model = self._result_model()
        meta = self.model._meta
        letters = meta.apps.get_model(meta.app_label, "DeadLetter")._default_manager
        job_id, attempts = job.fence
        with transaction.atomic(using=self.db):
            # Write first: on SQLite a transaction that reads before it writes can fail at once
            # with "database is locked" when another connection wrote in between.
            # A run someone asked to stop is not dead-lettered: see finish_cancelled().
            rows = self.filter(
                id=job_id, attempts=attempts, status=Status.RUNNING, cancel_requested=False
            )
            if lease_expired_before is not None:
                rows = rows.filter(lease_expires_at__lt=lease_expired_before)
            if not rows.update(
                status=Status.FAILED,
                finished_at=now,
                expires_at=models.Case(
                    models.When(
                        ttl_by_outcome=True,
                        then=models.Value(
                            now + timedelta(seconds=conf.result_ttl(Status.FAILED.value))
                        ),
                    ),
                    default=models.Value(now + timedelta(seconds=job.result_ttl)),
                ),
                lease_expires_at=None,
                last_error=error,
                attempt_log=AppendAttempt(exception_path, trace or error),
            ):
                return None
            row = self.model._default_manager.using(self.db).get(pk=job_id)
            result_model._default_manager.using(self.db).update_or_create(
                job=row, defaults={"error": error, "traceback": trace, "result": None}
            )
            letter = letters.using(self.db).create(
                **{name: getattr(row, name) for name in DEAD_LETTER_FIELDS},
                attempts=row.attempts,
                error=error,
                traceback=trace,
                failed_at=now,
            )
            if row.has_children or row.batch_id:
                release_children(
                    self._sql(),
                    [Ended(row.job_id, Status.FAILED, row.has_children, row.batch_id)],
                    now,
                )
        return letter, bool(row.notify)
