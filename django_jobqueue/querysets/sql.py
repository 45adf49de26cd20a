"""Shared SQL helpers of the job QuerySets: the bottom floor of :mod:`django_jobqueue.querysets`.

Quoted names and value adapters per connection (:class:`_SQL`), the status literals of the
hand-written statements, ``BEGIN IMMEDIATE`` on SQLite, the ``attempt_log`` append, and
:class:`SQLQuerySet`, the base every mixin of ``JobQuerySet`` builds on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import connections, models

from ..base import CLAIM_COLUMNS, ClaimedJob, Status

#: Status literals for the hand-written SQL below (constants, never user input).
_QUEUED = f"'{Status.QUEUED.value}'"
_RUNNING = f"'{Status.RUNNING.value}'"
_COMPLETED = f"'{Status.COMPLETED.value}'"
_CANCELLED = f"'{Status.CANCELLED.value}'"
#: A completion's status: ``cancelled`` when a cancel request reached the row before it.
_DONE_STATUS = f"CASE WHEN cancel_requested THEN {_CANCELLED} ELSE {_COMPLETED} END"

_JSON_COLUMNS = frozenset(
    {"args", "kwargs", "progress", "attempt_log", "trace_context", "metadata", "context"}
)
#: The JSON columns a claim may return as NULL.
_NULLABLE_CLAIM_JSON = ("trace_context", "metadata", "context")

#: The exception class recorded for a failed attempt that raised nothing (a lost lease, a
#: job name no worker knows).
DEFAULT_EXCEPTION_PATH = "django_jobqueue.exceptions.JobQueueError"

#: The error a cancelled job carries.
CANCELLED_ERROR = "Cancelled"


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
        for column in _NULLABLE_CLAIM_JSON:
            if values[column] is not None:
                values[column] = self.load_json(column, values[column])
        return ClaimedJob(**values)

    def pairs(self, items: Sequence[tuple[int, int]]) -> tuple[str, list[int]]:
        """``(id, attempts) IN (...)`` for fenced writes."""
        sql = ", ".join(["(%s, %s)"] * len(items))
        params = [value for pair in items for value in pair]
        return f"(id, attempts) IN ({sql})", params


class SQLQuerySet(models.QuerySet[Any]):
    """The base of ``JobQuerySet``'s mixins: the helpers every verb uses."""

    def _sql(self) -> _SQL:
        return _SQL(self.model, self.db)

    def _result_model(self) -> type[models.Model]:
        """``JobResult``, found through the job model: no import of :mod:`.models` here."""
        related: type[models.Model] = self.model._meta.get_field("outcome").related_model
        return related
