"""Helpers for your own tests (docs: "Testing your jobs").

::

    from django_jobqueue.testing import enqueued, run_jobs

    def test_signup_sends_a_welcome_email(client):
        client.post("/signup/", {...})
        assert [j.args for j in enqueued(name="accounts.jobs.send_welcome")] == [[42]]
        run_jobs()                      # runs them here, in the test's transaction

Both work in ``TestCase`` (and non-transactional pytest-django tests): jobs run in the
calling thread, on its database connection, so they see the test's rows.
``JOBQUEUE["EAGER"] = True`` runs each job as it is enqueued instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .base import Status
from .handles import JobHandle, get_job
from .models import Job
from .routers import queue_database, queue_databases
from .worker.inline import INLINE_WORKER, run_ready

__all__ = ["INLINE_WORKER", "EnqueuedJob", "enqueued", "run_jobs"]


def run_jobs(queue: str | None = None) -> int:
    """Run the queued jobs of ``queue`` (None: every queue) that are ready, here and now,
    one at a time (higher priority first, then enqueue order; a group one job at a time),
    until none is ready; return how many attempts ran.

    Jobs enqueued by the jobs themselves run too, if ready. A failed attempt is retried
    after its backoff like on a worker, so it is not ready again within this call: look at
    the job's handle (``status``, ``attempts``, ``error``), or set ``RETRY_BACKOFF`` to 0.
    Queues on databases of their own (``JOBQUEUE["QUEUES"]``) are run on theirs, in turn,
    until none has a ready job.
    """
    aliases = [queue_database(queue)] if queue is not None else queue_databases()
    total = 0
    while True:
        ran = sum(run_ready(queue, using=alias) for alias in aliases)
        total += ran
        if not ran or len(aliases) == 1:
            return total


@dataclass(frozen=True)
class EnqueuedJob:
    """A queued job as :func:`enqueued` lists it: what it will run, and with what."""

    id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    group: str | None
    run_after: datetime | None
    attempts: int

    def handle(self) -> JobHandle | None:
        """The job's :class:`~django_jobqueue.JobHandle` as it is now (None once pruned)."""
        return get_job(self.id)


def enqueued(name: str | None = None, *, queue: str | None = None) -> list[EnqueuedJob]:
    """The queued jobs (of job ``name`` and of ``queue``, when given), oldest first.

    ``name`` is the job's name (``"myapp.jobs.add"``, a task's ``module_path``). A job
    queued again for a retry is listed too (``attempts`` > 0)."""
    aliases = [queue_database(queue)] if queue is not None else queue_databases()
    return [job for alias in aliases for job in _enqueued(alias, name, queue)]


def _enqueued(alias: str, name: str | None, queue: str | None) -> list[EnqueuedJob]:
    rows = Job.objects.using(alias).filter(status=Status.QUEUED)
    if name is not None:
        rows = rows.filter(name=name)
    if queue is not None:
        rows = rows.filter(queue=queue)
    return [
        EnqueuedJob(
            id=row.job_id,
            name=row.name,
            queue=row.queue,
            args=list(row.args),
            kwargs=dict(row.kwargs),
            priority=row.priority,
            group=row.group,
            run_after=row.run_after,
            attempts=row.attempts,
        )
        for row in rows.order_by("id")
    ]
