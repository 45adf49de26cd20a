"""Producer verbs: inserting jobs (deduplicated on ``job_id``) and subscribing to one."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from itertools import chain, islice
from typing import Any, NamedTuple

from django.db import transaction
from django.utils import timezone

from ..base import ACTIVE, INITIAL_STATUS, NEW_JOB_COLUMNS, NewJob, Status
from .sql import _SQL, SQLQuerySet

#: Rows per INSERT of ``enqueue_many``; well under PostgreSQL's and SQLite's parameter limits.
INSERT_BATCH = 1000
#: Largest JSON document of one ``enqueue_many`` statement on PostgreSQL (ASCII characters).
JSON_BATCH_CHARS = 64 * 1024 * 1024

_INSERT_COLUMNS = NEW_JOB_COLUMNS
#: The values of the columns a new job does not choose: its status, no attempt yet, no
#: worker, no error. Literals, so a row costs ``len(_INSERT_COLUMNS)`` parameters.
_INITIAL_COLUMNS = "status, attempts, worker, last_error"
_INITIAL_VALUES = f"'{INITIAL_STATUS}', 0, '', ''"

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
    "ttl_by_outcome": "::boolean",
    "metadata": "::jsonb",
    "context": "::jsonb",
}


@functools.lru_cache(maxsize=8)
def _columns(group: str) -> str:
    """The INSERT's column list (``group`` quoted as the connection quotes it)."""
    return ", ".join(group if column == "group" else column for column in _INSERT_COLUMNS)


@functools.lru_cache(maxsize=8)
def _values_statement(table: str, group: str, rows: int) -> str:
    """The ``INSERT ... VALUES`` of ``rows`` rows: made once per size, not per enqueue (a
    single row is the common case; ``enqueue_many`` batches repeat a few sizes)."""
    row_sql = "(" + ", ".join(["%s"] * len(_INSERT_COLUMNS)) + f", {_INITIAL_VALUES})"
    return (
        f"INSERT INTO {table} ({_columns(group)}, {_INITIAL_COLUMNS}) "
        f"VALUES {', '.join([row_sql] * rows)} "
        "ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
    )


def _uniform(batch: Sequence[NewJob]) -> bool:
    first = batch[0]
    return all(getattr(row, c) == getattr(first, c) for row in batch for c in _UNIFORM_COLUMNS)


class Subscribed(NamedTuple):
    """What :meth:`JobQuerySet.subscribe` found: the queue to wake if the job is ready."""

    ready_queue: str | None


class ProducingQuerySet(SQLQuerySet):
    """Producer verbs: ``insert_new`` (``enqueue``, ``enqueue_many``) and ``subscribe``."""

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
        columns = _columns(sql.group)
        for start in range(0, len(rows), INSERT_BATCH):
            batch = rows[start : start + INSERT_BATCH]
            if sql.vendor == "postgresql" and len(batch) > 1 and _uniform(batch):
                yield from self._json_batch_statements(sql, columns, batch)
                continue
            params: list[Any] = []
            for row in batch:
                params.extend(sql.prep(column, getattr(row, column)) for column in _INSERT_COLUMNS)
            yield _values_statement(sql.table, sql.group, len(batch)), params

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
            f"INSERT INTO {sql.table} ({columns}, {_INITIAL_COLUMNS}) "
            f"SELECT {select}, {_INITIAL_VALUES} "
            "FROM jsonb_array_elements(%s::jsonb) AS u(j) "
            "ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
            [*params, document],
        )

    def lock_for_writing(self) -> None:
        """SQLite, first in a transaction: take the database's write lock now (waiting up to
        its busy timeout), so a transaction that reads jobs and then writes them is never
        refused for a stale snapshot ("database is locked") by another producer. A no-op
        elsewhere: PostgreSQL locks the rows it writes."""
        sql = self._sql()
        if sql.vendor == "sqlite":
            sql.execute(f"UPDATE {sql.table} SET id = id WHERE 0 = 1", [])

    def subscribe(self, job_id: str) -> Subscribed | None:
        """Mark an active job as waited for (its worker will send "finished").

        Returns None if the job is not queued or running, or already marked: then nothing
        is written (each WebSocket connect and each waiter of a job calls this; only the
        first writes the row). The UPDATE locks the row until it commits, and a worker
        claiming at that moment passes over it (``SKIP LOCKED``), so
        ``Subscribed.ready_queue`` names the queue to wake again once the lock is gone.
        """
        sql = self._sql()
        active = ", ".join(["%s"] * len(ACTIVE))
        rows = sql.execute(
            f"UPDATE {sql.table} SET notify = %s WHERE job_id = %s AND status IN ({active}) "
            "AND notify = %s RETURNING status, queue, (run_after IS NULL OR run_after <= %s)",
            [True, job_id, *ACTIVE, False, sql.prep("run_after", timezone.now())],
        )
        if not rows:
            return None
        status, queue, ready = rows[0]
        return Subscribed(str(queue) if status == Status.QUEUED and ready else None)
