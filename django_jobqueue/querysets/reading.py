"""Reading jobs: the states waiters poll and the sets workers and upkeep start from."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

from django.db import models

from ..base import FINISHED, JobSnapshot, JobState, Status
from .sql import SQLQuerySet


class ReadingQuerySet(SQLQuerySet):
    """Reads: ready, expired leases and results, a job's state and snapshot, the next retry."""

    def ready(self, now: datetime) -> Self:
        """Queued jobs whose ``run_after`` has passed (groups are not considered here)."""
        return self.filter(status=Status.QUEUED).filter(
            models.Q(run_after__isnull=True) | models.Q(run_after__lte=now)
        )

    def expired_leases(self, now: datetime) -> Self:
        """Running jobs whose worker stopped renewing the lease."""
        return self.filter(status=Status.RUNNING, lease_expires_at__lt=now)

    def expired_results(self, now: datetime) -> Self:
        """Finished jobs whose outcome is past ``result_ttl``."""
        return self.filter(status__in=FINISHED, expires_at__lte=now)

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
