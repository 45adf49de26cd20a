"""Cancelling: a job that waits (queued or blocked) at once, a running one by asking its
worker to stop; and the queue-wide cancel of queued jobs. Each in one transaction with what
follows the job (its children, its batch). And the opposite hurry: a queued retry started
without its wait (:meth:`CancellingQuerySet.retry_now`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

from django.db import transaction

from .. import conf
from ..base import Status
from .dependencies import ENDED_COLUMNS, ended, release_children
from .sql import CANCELLED_ERROR, SQLQuerySet


class Cancelled(NamedTuple):
    """What :meth:`JobQuerySet.cancel` did: ``running_on`` is the name of the worker asked
    to stop, or None when the job was queued and is now cancelled."""

    job_id: str
    queue: str
    notify: bool
    running_on: str | None


class CancellingQuerySet(SQLQuerySet):
    """Cancel jobs: :meth:`cancel` one by its id, :meth:`cancel_queued_rows` many queued ones;
    :meth:`retry_now` hurries queued retries."""

    def retry_now(self, job_ids: Sequence[str], *, now: datetime) -> list[tuple[str, str]]:
        """Start the queued retries among ``job_ids`` without their wait: a job that is
        queued, has had an attempt and waits for its ``run_after`` gets ``run_after`` cleared
        (one UPDATE, fenced on exactly that, so a job a worker claims meanwhile, or that
        someone cancels, is left as it is). Returns ``(job_id, queue)`` of each one hurried.

        A first run deferred with ``run_after`` is not a retry and is left waiting.
        """
        if not job_ids:
            return []
        sql = self._sql()
        marks = ", ".join(["%s"] * len(job_ids))
        rows = sql.execute(
            f"UPDATE {sql.table} SET run_after = NULL WHERE job_id IN ({marks}) "
            "AND status = %s AND attempts > 0 AND run_after > %s RETURNING job_id, queue",
            [*job_ids, Status.QUEUED, sql.prep("run_after", now)],
        )
        return [(str(job_id), str(queue)) for job_id, queue in rows]

    def cancel_queued_rows(self, pks: Sequence[int], *, result_ttl: int, now: datetime) -> int:
        """Cancel the jobs ``pks`` that are still queued (their ``result_ttl`` is
        ``result_ttl``), in one transaction with their followers (children, batches); return
        how many."""
        sql = self._sql()
        marks = ", ".join(["%s"] * len(pks))
        with transaction.atomic(using=self.db):
            rows = sql.execute(
                f"UPDATE {sql.table} SET status = %s, finished_at = %s, expires_at = %s, "
                f"lease_expires_at = NULL, last_error = %s WHERE id IN ({marks}) "
                f"AND status = %s RETURNING notify, {ENDED_COLUMNS}",
                [
                    Status.CANCELLED,
                    sql.prep("finished_at", now),
                    sql.prep("expires_at", now + timedelta(seconds=result_ttl)),
                    CANCELLED_ERROR,
                    *pks,
                    Status.QUEUED,
                ],
            )
            endings = [ended((0, 0, Status.CANCELLED, *row[1:])) for row in rows]
            if any(end.followed for end in endings):
                release_children(sql, [end for end in endings if end.followed], now)
        return len(rows)

    def cancel(self, job_id: str, *, now: datetime) -> Cancelled | None:
        """Cancel ``job_id``: a queued or blocked job at once (it never runs; its children
        follow their ``parent_failure``), a running one by asking its worker to stop
        (``cancel_requested``). None if there is no such active job.

        Writes before it reads, in one transaction, fenced on the status it changes, so a
        worker claiming or finishing the job at the same moment either sees the cancel or
        wins it (a completion recorded first stays completed).
        """
        sql = self._sql()
        with transaction.atomic(using=self.db):
            rows = sql.execute(
                f"UPDATE {sql.table} SET status = %s, finished_at = %s, lease_expires_at = NULL, "
                "last_error = %s, waiting_for = 0 WHERE job_id = %s AND status IN (%s, %s) "
                f"RETURNING id, result_ttl, notify, queue, ttl_by_outcome, {ENDED_COLUMNS}",
                [
                    Status.CANCELLED,
                    sql.prep("finished_at", now),
                    CANCELLED_ERROR,
                    job_id,
                    Status.QUEUED,
                    Status.BLOCKED,
                ],
            )
            if rows:
                pk, ttl, notify, queue, by_outcome, *rest = rows[0]
                if by_outcome:
                    ttl = conf.result_ttl(Status.CANCELLED.value)
                self.filter(pk=pk).update(expires_at=now + timedelta(seconds=ttl))
                end = ended((0, 0, Status.CANCELLED, *rest))
                if end.followed:
                    release_children(sql, [end], now)
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
