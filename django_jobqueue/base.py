"""The vocabulary every layer shares: job statuses and the plain values that travel between
layers (a job to write, a job's state, a claimed run). No models, no database access.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import models


class Status(models.TextChoices):
    """A job's status; the only spelling of these values in the package."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


#: Statuses of a job that has not finished: it holds its id against a new run.
ACTIVE: tuple[str, ...] = (Status.QUEUED.value, Status.RUNNING.value)
#: Statuses of a job that ended; its outcome is kept for ``result_ttl`` seconds.
FINISHED: tuple[str, ...] = (
    Status.COMPLETED.value,
    Status.FAILED.value,
    Status.CANCELLED.value,
)


#: The status a new job is written with (a job with parents will start "blocked").
INITIAL_STATUS: str = Status.QUEUED.value


class Ending(enum.Enum):
    """How one attempt ended: the one vocabulary of the worker's log line, the signals and the
    metrics, which are rendered from it and never parsed back from text.

    ``status`` is the job's status once the ending is recorded; ``metric`` the ``outcome``
    label of ``jobqueue_jobs_finished_total`` (None: the job has not finished, or another
    worker owns it now).
    """

    COMPLETED = ("completed", Status.COMPLETED.value, "completed")
    RETRIED = ("retried", Status.QUEUED.value, None)
    DEAD_LETTERED = ("dead-lettered", Status.FAILED.value, "failed")
    CANCELLED = ("cancelled", Status.CANCELLED.value, "cancelled")
    #: The run lost its lease (or its claim was rolled back): its outcome is not recorded.
    DISCARDED = ("discarded", None, None)

    def __init__(self, word: str, status: str | None, metric: str | None) -> None:
        self.word = word
        self.status = status
        self.metric = metric

    @property
    def finished(self) -> bool:
        """The job ended for good with this attempt."""
        return self.status in FINISHED


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be written: exactly the columns ``enqueue`` inserts, in their order."""

    job_id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    priority: int
    group: str | None
    run_after: datetime | None
    max_attempts: int
    result_ttl: int
    notify: bool
    enqueued_at: datetime
    time_limit: float | None = None
    limit_key: str | None = None
    #: ``[]`` for a task of Django's Tasks framework (its failed attempts are logged there);
    #: None for an ``@job`` job, which logs nothing and costs nothing more.
    attempt_log: list[Any] | None = None
    #: The producer's OpenTelemetry context (``traceparent``...), when tracing is on.
    trace_context: dict[str, str] | None = None

    def with_id(self, job_id: str) -> NewJob:
        return dataclasses.replace(self, job_id=job_id)


#: The columns of a new job's INSERT, spelled once: the fields of :class:`NewJob`.
NEW_JOB_COLUMNS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(NewJob))


@dataclass(slots=True)
class JobState:
    """What a waiter needs of a job: its status, attempts, result and error.

    ``error`` is the last attempt's error, the final one once the job failed.
    """

    status: str
    attempts: int
    result: Any
    error: str

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(slots=True)
class ClaimedJob:
    """A run a worker holds the lease of; ``attempts`` is the fencing token of this run."""

    id: int
    job_id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempts: int
    max_attempts: int
    result_ttl: int
    priority: int
    group: str | None
    time_limit: float | None = None
    limit_key: str | None = None
    trace_context: dict[str, str] | None = None

    @property
    def fence(self) -> tuple[int, int]:
        """``(id, attempts)``: what every write of this run is conditioned on."""
        return (self.id, self.attempts)


#: The columns a claim returns, in :class:`ClaimedJob`'s order.
CLAIM_COLUMNS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(ClaimedJob))


@dataclass(slots=True)
class JobSnapshot:
    """Everything a :class:`~django_jobqueue.JobHandle` shows of one job, read at one moment.

    ``created`` is True when the call that produced it queued a new run.
    """

    id: str
    name: str
    queue: str
    status: str
    pk: int | None = None
    result: Any = None
    error: str = ""
    attempts: int = 0
    created: bool = False
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] | None = None

    @classmethod
    def of_new(cls, job: NewJob) -> JobSnapshot:
        """The snapshot of a job this call has just inserted."""
        return cls(
            job.job_id,
            job.name,
            job.queue,
            Status.QUEUED.value,
            created=True,
            enqueued_at=job.enqueued_at,
        )

    @property
    def state(self) -> JobState:
        return JobState(self.status, self.attempts, self.result, self.error)
