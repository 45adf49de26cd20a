"""Query verbs for jobs: the hot path of producers and workers.

Claiming, completing and renewing leases are single SQL statements (``UPDATE ...
RETURNING``) written here by hand: each costs one round trip and, outside a caller's
transaction, one commit. Every write by a worker is fenced on ``(id, attempts)``, so a worker
whose lease was taken over cannot overwrite the newer run's outcome.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from itertools import chain, islice
from typing import Any, NamedTuple

from django.db import connections, models, transaction
from django.utils import timezone

from .base import (
    ACTIVE,
    CLAIM_COLUMNS,
    FINISHED,
    NEW_JOB_COLUMNS,
    ClaimedJob,
    JobSnapshot,
    JobState,
    NewJob,
    Status,
)

#: Status literals for the hand-written SQL below (constants, never user input).
_QUEUED = f"'{Status.QUEUED.value}'"
_RUNNING = f"'{Status.RUNNING.value}'"
_COMPLETED = f"'{Status.COMPLETED.value}'"
_CANCELLED = f"'{Status.CANCELLED.value}'"
#: A completion's status: ``cancelled`` when a cancel request reached the row before it.
_DONE_STATUS = f"CASE WHEN cancel_requested THEN {_CANCELLED} ELSE {_COMPLETED} END"

#: Finished jobs deleted per pruning statement (and transaction): short enough that no lock
#: is held for long, large enough that a worker deletes faster than the queue drains.
PRUNE_BATCH = 1000

#: Rows per INSERT of ``enqueue_many``; well under PostgreSQL's and SQLite's parameter limits.
INSERT_BATCH = 1000
#: Largest JSON document of one ``enqueue_many`` statement on PostgreSQL (ASCII characters).
JSON_BATCH_CHARS = 64 * 1024 * 1024

_INSERT_COLUMNS = NEW_JOB_COLUMNS

_JSON_COLUMNS = frozenset({"args", "kwargs", "progress", "attempt_log", "trace_context"})

#: Columns equal in every row of one ``enqueue_many`` call (one job, one options set).
_UNIFORM_COLUMNS = tuple(c for c in _INSERT_COLUMNS if c not in ("job_id", "args", "kwargs"))
_CASTS = {
    "priority": "::integer",
    "run_after": "::timestamptz",
    "max_attempts": "::integer",
    "result_ttl": "::integer",
    "notify": "::boolean",
    "enqueued_at": "::timestamptz",
    "time_limit": "::double precision",
    "limit_key": "::varchar",
    "attempt_log": "::jsonb",
    "trace_context": "::jsonb",
}

#: The exception class recorded for a failed attempt that raised nothing (a lost lease, a
#: job name no worker knows).
DEFAULT_EXCEPTION_PATH = "django_jobqueue.exceptions.JobQueueError"


def _append_attempt_sql(vendor: str) -> str:
    """:class:`AppendAttempt` for hand-written SQL: two parameters, the exception's class path
    and the traceback; the worker and start time are the row's own before the UPDATE."""
    if vendor == "postgresql":
        return (
            "(attempt_log || jsonb_build_array(jsonb_build_object('worker', worker, "
            "'started_at', started_at, 'exception', (%s)::text, 'traceback', (%s)::text)))"
        )
    return (
        "json_insert(attempt_log, '$[#]', json_object('worker', worker, 'started_at', "
        "started_at, 'exception', %s, 'traceback', %s))"
    )


class AppendAttempt(models.Func):
    """``attempt_log`` with one more entry: the failed attempt of the row being updated (its
    ``worker`` and ``started_at`` before the update), its exception class and traceback.

    A NULL log (an ``@job`` job) stays NULL: ``NULL || x`` and ``json_insert(NULL, ...)`` are
    NULL, so the job's own statement carries it and nothing else is written.
    """

    output_field = models.JSONField()

    def __init__(self, exception_path: str, traceback: str) -> None:
        super().__init__(
            models.F("attempt_log"),
            models.F("worker"),
            models.F("started_at"),
            models.Value(exception_path),
            models.Value(traceback),
        )

    def as_sql(  # type: ignore[override]
        self, compiler: Any, connection: Any, **extra: Any
    ) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        for expression in self.get_source_expressions():
            sql, more = compiler.compile(expression)
            parts.append(sql)
            params.extend(more)
        log, worker, started, path, trace = parts
        if connection.vendor == "postgresql":
            return (
                f"({log} || jsonb_build_array(jsonb_build_object('worker', {worker}, "
                f"'started_at', {started}, 'exception', ({path})::text, "
                f"'traceback', ({trace})::text)))",
                params,
            )
        return (
            f"json_insert({log}, '$[#]', json_object('worker', {worker}, 'started_at', "
            f"{started}, 'exception', {path}, 'traceback', {trace}))",
            params,
        )


def _uniform(batch: Sequence[NewJob]) -> bool:
    first = batch[0]
    return all(getattr(row, c) == getattr(first, c) for row in batch for c in _UNIFORM_COLUMNS)


class Subscribed(NamedTuple):
    """What :meth:`JobQuerySet.subscribe` found: the queue to wake if the job is ready."""

    ready_queue: str | None


#: The error a cancelled job carries.
CANCELLED_ERROR = "Cancelled"


class Completed(dict[int, bool]):
    """What :meth:`JobQuerySet.complete` wrote: ``{id: notify}`` of the runs still ours, and
    in ``cancelled`` the ids that ended ``cancelled`` instead (a cancel request was recorded
    on the row before the completion)."""

    def __init__(self, rows: Sequence[tuple[Any, ...]] = ()) -> None:
        super().__init__((row[0], bool(row[1])) for row in rows)
        self.cancelled: set[int] = {row[0] for row in rows if row[2] == Status.CANCELLED}


class Renewed(set[int]):
    """What :meth:`JobQuerySet.renew_leases` renewed: the ids still ours, and in
    ``cancel_requested`` those someone asked to stop."""

    def __init__(self, rows: Sequence[tuple[Any, ...]] = ()) -> None:
        super().__init__(row[0] for row in rows)
        self.cancel_requested: set[int] = {row[0] for row in rows if row[1]}


class Cancelled(NamedTuple):
    """What :meth:`JobQuerySet.cancel` did: ``running_on`` is the name of the worker asked
    to stop, or None when the job was queued and is now cancelled."""

    job_id: str
    queue: str
    notify: bool
    running_on: str | None


#: The first key of the advisory locks that serialise the claims of one limit key.
LOCK_SPACE = 0x646A71  # "djq"


@contextmanager
def _immediate(sql: _SQL) -> Iterator[None]:
    """SQLite: one ``BEGIN IMMEDIATE`` transaction (claimers take turns from its start)."""
    if sql.connection.in_atomic_block:
        yield
        return
    sql.connection.ensure_connection()
    with sql.connection.cursor() as cursor:
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")


class _SQL:
    """Quoted names and value adapters for one database connection."""

    def __init__(self, model: type[models.Model], using: str) -> None:
        self.connection = connections[using]
        qn = self.connection.ops.quote_name
        self.table = qn(model._meta.db_table)
        self.group = qn("group")
        self.model = model
        self.vendor = self.connection.vendor

    def field(self, name: str) -> Any:
        return self.model._meta.get_field(name)

    def prep(self, field: str, value: Any) -> Any:
        if self.vendor == "postgresql" and field not in _JSON_COLUMNS:
            return value  # psycopg adapts str, int, bool, None and datetimes as Django would
        return self.field(field).get_db_prep_save(value, self.connection)

    def load_json(self, field: str, value: Any) -> Any:
        return self.field(field).from_db_value(value, None, self.connection)

    def execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def claim_returning(self, prefix: str) -> str:
        columns = (self.group if column == "group" else column for column in CLAIM_COLUMNS)
        return "RETURNING " + ", ".join(prefix + column for column in columns)

    def claimed(self, row: Sequence[Any]) -> ClaimedJob:
        """A claim's RETURNING row (columns :data:`CLAIM_COLUMNS`) as a :class:`ClaimedJob`."""
        values = dict(zip(CLAIM_COLUMNS, row, strict=True))
        values["args"] = self.load_json("args", values["args"])
        values["kwargs"] = self.load_json("kwargs", values["kwargs"])
        if values["trace_context"] is not None:
            values["trace_context"] = self.load_json("trace_context", values["trace_context"])
        return ClaimedJob(**values)

    def pairs(self, items: Sequence[tuple[int, int]]) -> tuple[str, list[int]]:
        """``(id, attempts) IN (...)`` for fenced writes."""
        sql = ", ".join(["(%s, %s)"] * len(items))
        params = [value for pair in items for value in pair]
        return f"(id, attempts) IN ({sql})", params


class JobQuerySet(models.QuerySet[Any]):
    def _sql(self) -> _SQL:
        return _SQL(self.model, self.db)

    # -- reading ------------------------------------------------------------------------

    def ready(self, now: datetime) -> JobQuerySet:
        """Queued jobs whose ``run_after`` has passed (groups are not considered here)."""
        return self.filter(status=Status.QUEUED).filter(
            models.Q(run_after__isnull=True) | models.Q(run_after__lte=now)
        )

    def expired_leases(self, now: datetime) -> JobQuerySet:
        """Running jobs whose worker stopped renewing the lease."""
        return self.filter(status=Status.RUNNING, lease_expires_at__lt=now)

    def expired_results(self, now: datetime) -> JobQuerySet:
        """Finished jobs whose outcome is past ``result_ttl``."""
        return self.filter(status__in=FINISHED, expires_at__lte=now)

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
        their ``result_ttl`` (``manage.py jobqueue prune --older-than``).

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
        where = f"status IN ({finished}) AND {condition}"
        params: list[Any] = [*FINISHED, value]
        results = self._result_model()._meta.db_table
        if sql.vendor == "postgresql":
            rows = sql.execute(
                f"WITH doomed AS (SELECT id FROM {sql.table} WHERE {where} "
                "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED), "
                f"gone AS (DELETE FROM {sql.table} j USING doomed WHERE j.id = doomed.id "
                "RETURNING j.id), "
                f"stored AS (DELETE FROM {results} r USING gone WHERE r.job_id = gone.id) "
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
            cursor.execute(f"DELETE FROM {sql.table} WHERE {chosen}", [*ids, *params])
            return int(cursor.rowcount)

    def state(self, job_id: str) -> JobState | None:
        """The :class:`JobState` of ``job_id`` in one hand-written query: what a waiter polls."""
        sql = self._sql()
        result_model = self.model._meta.get_field("outcome").related_model
        result_table = sql.connection.ops.quote_name(result_model._meta.db_table)
        rows = sql.execute(
            f"SELECT j.status, j.attempts, j.last_error, r.result, r.error FROM {sql.table} j "
            f"LEFT JOIN {result_table} r ON r.job_id = j.id WHERE j.job_id = %s",
            [job_id],
        )
        if not rows:
            return None
        status, attempts, last_error, result, error = rows[0]
        if result is not None:
            field: Any = result_model._meta.get_field("result")
            result = field.from_db_value(result, None, sql.connection)
        if status == Status.FAILED:
            last_error = error or last_error
        return JobState(status, attempts, result, last_error)

    def snapshot(self, job_id: str) -> JobSnapshot | None:
        """Everything a handle shows of ``job_id``, or None if there is no such job."""
        job = self.select_related("outcome").filter(job_id=job_id).first()
        return job.snapshot() if job is not None else None

    # -- producing ----------------------------------------------------------------------

    def insert_new(self, rows: Sequence[NewJob]) -> set[str]:
        """Insert jobs, skipping any whose ``job_id`` exists; return the ``job_id`` inserted.

        One ``INSERT ... ON CONFLICT (job_id) DO NOTHING RETURNING job_id`` statement per
        :data:`INSERT_BATCH` rows, so a concurrent producer of the same id never causes an
        IntegrityError: one of them inserts, the other sees the existing job. Several
        statements run in one transaction: all the rows are written, or none.
        """
        sql = self._sql()
        statements = self._insert_statements(sql, rows)  # built one at a time (memory)
        ahead = list(islice(statements, 2))  # a second statement means a transaction
        inserted: set[str] = set()
        with transaction.atomic(using=self.db) if len(ahead) > 1 else nullcontext():
            for statement, params in chain(ahead, statements):
                inserted.update(job_id for (job_id,) in sql.execute(statement, params))
        return inserted

    def _insert_statements(
        self, sql: _SQL, rows: Sequence[NewJob]
    ) -> Iterator[tuple[str, list[Any]]]:
        columns = ", ".join(
            sql.group if column == "group" else column for column in _INSERT_COLUMNS
        )
        # Constant columns are literals, so a row costs len(_INSERT_COLUMNS) parameters.
        row_sql = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + ", 'queued', 0, '', '')"
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start : start + INSERT_BATCH]
            if sql.vendor == "postgresql" and len(batch) > 1 and _uniform(batch):
                yield from self._json_batch_statements(sql, columns, batch)
                continue
            params: list[Any] = []
            for row in batch:
                params.extend(sql.prep(column, getattr(row, column)) for column in _INSERT_COLUMNS)
            yield (
                f"INSERT INTO {sql.table} ({columns}, status, attempts, worker, last_error) "
                f"VALUES {', '.join([row_sql] * len(batch))} "
                "ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                params,
            )

    @classmethod
    def _json_batch_statements(
        cls, sql: _SQL, columns: str, batch: Sequence[NewJob]
    ) -> Iterator[tuple[str, list[Any]]]:
        """PostgreSQL, a batch from one ``enqueue_many`` call: only the id and the arguments
        vary, so they travel as one JSON document (``[[job_id, args, kwargs], ...]``, one
        ``json.dumps`` for the batch) and everything else once: no 12 placeholders per row
        for the driver to build and the server to parse. A document over
        :data:`JSON_BATCH_CHARS` (jsonb stops at 256 MB) is split in halves."""
        document = json.dumps(
            [[row.job_id, row.args, row.kwargs] for row in batch], separators=(",", ":")
        )
        if len(document) > JSON_BATCH_CHARS and len(batch) > 1:
            half = len(batch) // 2
            yield from cls._json_batch_statements(sql, columns, batch[:half])
            yield from cls._json_batch_statements(sql, columns, batch[half:])
            return
        first = batch[0]
        select = ", ".join(
            {"job_id": "u.j->>0", "args": "u.j->1", "kwargs": "u.j->2"}.get(
                column, f"%s{_CASTS.get(column, '')}"
            )
            for column in _INSERT_COLUMNS
        )
        params = [sql.prep(c, getattr(first, c)) for c in _INSERT_COLUMNS if c in _UNIFORM_COLUMNS]
        yield (
            f"INSERT INTO {sql.table} ({columns}, status, attempts, worker, last_error) "
            f"SELECT {select}, 'queued', 0, '', '' "
            "FROM jsonb_array_elements(%s::jsonb) AS u(j) "
            "ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            [*params, document],
        )

    def subscribe(self, job_id: str) -> Subscribed | None:
        """Mark an active job as waited for (its worker will send "finished").

        Returns None if the job is not queued or running. The UPDATE locks the row until it
        commits, and a worker claiming at that moment passes over it (``SKIP LOCKED``), so
        ``Subscribed.ready_queue`` names the queue to wake again once the lock is gone.
        """
        sql = self._sql()
        rows = sql.execute(
            f"UPDATE {sql.table} SET notify = %s WHERE job_id = %s AND status IN (%s, %s) "
            "RETURNING status, queue, (run_after IS NULL OR run_after <= %s)",
            [True, job_id, *ACTIVE, sql.prep("run_after", timezone.now())],
        )
        if not rows:
            return None
        status, queue, ready = rows[0]
        return Subscribed(str(queue) if status == Status.QUEUED and ready else None)

    def cancel(self, job_id: str, *, now: datetime) -> Cancelled | None:
        """Cancel ``job_id``: a queued job at once (it never runs), a running one by asking
        its worker to stop (``cancel_requested``). None if there is no such active job.

        Writes before it reads, in one transaction, fenced on the status it changes, so a
        worker claiming or finishing the job at the same moment either sees the cancel or
        wins it (a completion recorded first stays completed).
        """
        sql = self._sql()
        with transaction.atomic(using=self.db):
            rows = sql.execute(
                f"UPDATE {sql.table} SET status = %s, finished_at = %s, lease_expires_at = NULL, "
                "last_error = %s WHERE job_id = %s AND status = %s "
                "RETURNING id, result_ttl, notify, queue",
                [
                    Status.CANCELLED,
                    sql.prep("finished_at", now),
                    CANCELLED_ERROR,
                    job_id,
                    Status.QUEUED,
                ],
            )
            if rows:
                pk, ttl, notify, queue = rows[0]
                self.filter(pk=pk).update(expires_at=now + timedelta(seconds=ttl))
                return Cancelled(job_id, str(queue), bool(notify), running_on=None)
            rows = sql.execute(
                f"UPDATE {sql.table} SET cancel_requested = %s WHERE job_id = %s AND status = %s "
                "RETURNING notify, queue, worker",
                [True, job_id, Status.RUNNING],
            )
        if not rows:
            return None
        notify, queue, worker = rows[0]
        return Cancelled(job_id, str(queue), bool(notify), running_on=str(worker))

    # -- working ------------------------------------------------------------------------

    def claim(
        self,
        *,
        queue: str | None,
        limit: int,
        worker: str,
        now: datetime,
        lease_until: datetime,
        limit_key: str | None = None,
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` ready jobs of ``queue`` (``None``: every queue) and lease them.

        Highest ``priority`` first, then enqueue order. A job with a ``group`` is taken only
        when no earlier job of its group is queued or running, so a group runs one job at a
        time, in order. PostgreSQL: one statement with ``FOR UPDATE SKIP LOCKED``, so workers
        never wait on each other. SQLite: the same selection inside ``BEGIN IMMEDIATE``, which
        serialises claimers.

        ``limit_key`` None takes only jobs without a limit; a key takes only that key's jobs
        and holds no limit itself (see :meth:`claim_limited`, or the Redis limiter that
        reserved the room before this claim).
        """
        sql = self._sql()
        statement, params = self._claim_statement(
            sql, queue, limit, worker, now, lease_until, limit_key
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
    ) -> tuple[str, list[Any]]:
        select, select_params = self._claim_select(sql, queue, limit, now, limit_key)
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
    ) -> tuple[str, list[Any]]:
        """The claim's selection: served by ``djq_claim_any`` (no queue) or ``djq_claim_queue``
        for jobs without a limit, by ``djq_limit_queued`` for one key's jobs."""
        queue_filter = "AND c.queue = %s " if queue is not None else ""
        key_filter = "AND c.limit_key IS NULL " if limit_key is None else "AND c.limit_key = %s "
        select = (
            f"SELECT c.id FROM {sql.table} c "
            f"WHERE c.status = {_QUEUED} {key_filter}{queue_filter}"
            "AND (c.run_after IS NULL OR c.run_after <= %s) "
            f"AND (c.{sql.group} IS NULL OR NOT EXISTS ("
            f"SELECT 1 FROM {sql.table} g WHERE g.{sql.group} = c.{sql.group} "
            f"AND g.status IN ({_QUEUED}, {_RUNNING}) "
            f"AND (g.status = {_RUNNING} OR g.id < c.id))) "
            "ORDER BY c.priority DESC, c.id LIMIT %s"
        )
        params: list[Any] = [] if limit_key is None else [limit_key]
        params += [queue] if queue is not None else []
        return select, [*params, sql.prep("run_after", now), limit]

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
        if sql.connection.in_atomic_block:
            return sql.execute(statement, params)
        with sql.connection.cursor() as cursor:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.execute(statement, params)
                rows: list[tuple[Any, ...]] = cursor.fetchall()
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        return rows

    # -- limits per key -------------------------------------------------------------------

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

    def _limit_start_model(self) -> type[models.Model]:
        """``LimitStart``, found through the app registry: no import of :mod:`.models` here."""
        meta = self.model._meta
        model: type[models.Model] = meta.apps.get_model(meta.app_label, "LimitStart")
        return model

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
        where, params = sql.pairs(fenced)
        rows = sql.execute(
            f"UPDATE {sql.table} SET status = {_DONE_STATUS}, finished_at = %s, expires_at = %s, "
            f"lease_expires_at = NULL, last_error = CASE WHEN cancel_requested THEN %s "
            f"ELSE last_error END WHERE status = {_RUNNING} AND {where} "
            "RETURNING id, notify, status",
            [
                sql.prep("finished_at", now),
                sql.prep("expires_at", expires_at),
                CANCELLED_ERROR,
                *params,
            ],
        )
        return Completed(rows)

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
        where, params = sql.pairs(fenced)
        result_table = result_model._meta.db_table
        result_field: Any = result_model._meta.get_field("result")
        values = ", ".join(["(%s::bigint, %s::jsonb)"] * len(results))
        value_params: list[Any] = []
        for pk, value in results.items():
            value_params += [pk, result_field.get_db_prep_save(value, sql.connection)]
        rows = sql.execute(
            f"WITH done AS (UPDATE {sql.table} SET status = {_DONE_STATUS}, finished_at = %s, "
            "expires_at = %s, lease_expires_at = NULL, last_error = CASE WHEN cancel_requested "
            f"THEN %s ELSE last_error END WHERE status = {_RUNNING} AND {where} "
            f"RETURNING id, notify, status), stored AS (INSERT INTO {result_table} "
            "(job_id, result, error, traceback) SELECT v.id, v.result, '', '' "
            f"FROM (VALUES {values}) AS v(id, result) JOIN done ON done.id = v.id "
            f"AND done.status = {_COMPLETED}) SELECT id, notify, status FROM done",
            [
                sql.prep("finished_at", now),
                sql.prep("expires_at", expires_at),
                CANCELLED_ERROR,
                *params,
                *value_params,
            ],
        )
        return Completed(rows)

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
        outcome kept ``result_ttl`` seconds from ``now``), in the same statement.
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
            sql.prep("expires_at", now + timedelta(seconds=result_ttl)),
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
        rows = sql.execute(
            f"UPDATE {sql.table} SET "
            f"status = CASE WHEN cancel_requested THEN {_CANCELLED} ELSE {_QUEUED} END, "
            "run_after = CASE WHEN cancel_requested THEN run_after ELSE %s END, "
            "finished_at = CASE WHEN cancel_requested THEN %s ELSE finished_at END, "
            "expires_at = CASE WHEN cancel_requested THEN %s ELSE expires_at END, "
            "last_error = CASE WHEN cancel_requested THEN %s ELSE %s END, "
            f"attempt_log = {_append_attempt_sql(sql.vendor)}, "
            "lease_expires_at = NULL, worker = '' "
            f"WHERE id = %s AND attempts = %s AND status = {_RUNNING} {lease}"
            "RETURNING status, notify",
            params,
        )
        return (str(rows[0][0]), bool(rows[0][1])) if rows else None

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
        found = sql.execute(
            f"UPDATE {sql.table} SET status = {_CANCELLED}, finished_at = %s, expires_at = %s, "
            "lease_expires_at = NULL, last_error = %s WHERE id = %s AND attempts = %s "
            f"AND status = {_RUNNING} AND cancel_requested"
            + (" AND lease_expires_at < %s" if lease_expired_before is not None else "")
            + " RETURNING notify",
            [
                sql.prep("finished_at", now),
                sql.prep("expires_at", now + timedelta(seconds=result_ttl)),
                CANCELLED_ERROR,
                job_id,
                attempts,
                *(
                    [sql.prep("lease_expires_at", lease_expired_before)]
                    if lease_expired_before is not None
                    else []
                ),
            ],
        )
        return bool(found[0][0]) if found else None

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
        row (error and traceback), a ``DeadLetter`` row.

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
                expires_at=now + timedelta(seconds=job.result_ttl),
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
                job_id=row.job_id,
                name=row.name,
                queue=row.queue,
                args=row.args,
                kwargs=row.kwargs,
                priority=row.priority,
                group=row.group,
                max_attempts=row.max_attempts,
                result_ttl=row.result_ttl,
                attempts=row.attempts,
                attempt_log=row.attempt_log,
                error=error,
                traceback=trace,
                enqueued_at=row.enqueued_at,
                failed_at=now,
            )
        return letter, bool(row.notify)

    def next_retry(self, queues: Sequence[str] | None, now: datetime) -> datetime | None:
        """When the earliest retry of ``queues`` (``None``: every queue) falls due: the
        ``run_after`` of a queued job that already ran (``attempts > 0``) and waits out its
        backoff. None if no such job waits. Jobs first delayed by ``run_after`` at enqueue
        (``attempts == 0``) are not retries."""
        rows = self.filter(status=Status.QUEUED, attempts__gt=0, run_after__gt=now)
        if queues is not None:
            rows = rows.filter(queue__in=queues)
        first: datetime | None = rows.aggregate(first=models.Min("run_after"))["first"]
        return first

    def _result_model(self) -> type[models.Model]:
        """``JobResult``, found through the job model: no import of :mod:`.models` here."""
        related: type[models.Model] = self.model._meta.get_field("outcome").related_model
        return related

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


class DeadLetterQuerySet(models.QuerySet[Any]):
    """Dead letters; requeueing lives in :mod:`django_jobqueue.deadletters`."""


class ScheduleQuerySet(models.QuerySet[Any]):
    """Schedule states; enqueueing ticks lives in :mod:`django_jobqueue.periodic`."""

    def claim_tick(self, name: str, tick: datetime, job_id: str, now: datetime) -> bool:
        """Record ``tick`` as the schedule's last, if it is newer than the last one, falls
        after the moment the schedule started counting and the schedule is not paused.

        True for exactly one caller per tick, however many race (the row is the guard: on
        PostgreSQL the second UPDATE waits for the first and then finds the condition false).
        """
        claimed: int = (
            self.filter(name=name, paused=False, since__lt=tick)
            .filter(models.Q(last_tick__isnull=True) | models.Q(last_tick__lt=tick))
            .update(last_tick=tick, last_job_id=job_id, last_enqueued_at=now)
        )
        return claimed == 1


class WorkerHeartbeatQuerySet(models.QuerySet[Any]):
    """Live workers' heartbeat rows: one per worker, refreshed on its heartbeat timer."""

    def seen_since(self, moment: datetime) -> models.QuerySet[Any]:
        """Rows refreshed at or after ``moment``: workers taken to be alive."""
        return self.filter(last_seen__gte=moment)
