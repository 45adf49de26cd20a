"""The vocabulary every layer shares: job statuses, the moves between them and the endings
of an attempt, and the plain values that travel between layers (a job to write, a job's
state, a claimed run). No models, no database access.

Each fact is declared here once and derived everywhere else: :class:`Status` (with
:data:`MOVES`, from which :data:`ACTIVE` and :data:`FINISHED` follow) gives the INSERT's
initial status, the model's choices and index conditions, the admin's overview columns,
``jobqueue status`` and the metrics' depth by status; :class:`Ending` gives the worker's log
line, the ``job_finished`` signal and the outcome counters; :class:`NewJob` gives the INSERT's
columns, the dead letter's copy of a job and requeue (:data:`DEAD_LETTER_FIELDS`).

Adding a status (workflows' "blocked") is one line in :class:`Status` and its moves in
:data:`MOVES`, plus a migration (the model's choices, and the index conditions that name
:data:`ACTIVE`). Everything listed above follows. What does not follow, by design:

* the queries that move a job (claim, complete, retry, cancel; ``querysets/``) name the
  statuses they move from and to: a move nobody writes does not happen;
* ``backend.STATUSES`` says what the status is to Django's Tasks framework, and
  ``admin.display.STATUS_COLOURS`` gives it a colour (grey without one);
* a status outside :data:`FINISHED` is counted exactly by the overview, ``jobqueue status``
  and the metrics (one grouped query per status): give it a partial index if it can hold
  many jobs.

``tests/test_lifecycle.py`` walks every status through those places and fails on one that
lists statuses by hand.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    """A job's status; the only spelling of these values in the package."""

    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")
    #: Waiting for its parents (workflows); last, so that columns listed before stay put.
    BLOCKED = "blocked", _("Blocked")


#: The moves between statuses: a job in a key's status may next be in one of its values.
#: A job is written :data:`INITIAL_STATUS`; a status with no move out is an end
#: (:data:`FINISHED`). ``running -> queued`` is a retry (or an expired lease); requeueing a
#: dead letter and rerunning a finished job write a new run, they move no status.
#: Workflows: a job with parents is written queued and moved, in the same transaction,
#: ``queued -> blocked`` (or ``cancelled``, a parent failed already); ``blocked -> queued`` is
#: its last parent's completion, ``blocked -> cancelled`` a parent's failure
#: (``parent_failure="cancel"``) or a cancel. Requeueing a dead-lettered parent puts the
#: children it cancelled back to blocked, as requeue writes a new run.
MOVES: dict[str, tuple[str, ...]] = {
    Status.BLOCKED.value: (Status.QUEUED.value, Status.CANCELLED.value),
    Status.QUEUED.value: (Status.RUNNING.value, Status.CANCELLED.value, Status.BLOCKED.value),
    Status.RUNNING.value: (
        Status.COMPLETED.value,
        Status.FAILED.value,
        Status.CANCELLED.value,
        Status.QUEUED.value,
    ),
}

#: Statuses of a job that ended; its outcome is kept for ``result_ttl`` seconds.
FINISHED: tuple[str, ...] = tuple(status for status in Status.values if not MOVES.get(status))
#: Statuses of a job that has not finished: it holds its id against a new run.
ACTIVE: tuple[str, ...] = tuple(status for status in Status.values if status not in FINISHED)


#: The status a new job is written with (a job with parents then moves to "blocked" in the
#: same transaction, before anyone can see it: :mod:`django_jobqueue.workflows`).
INITIAL_STATUS: str = Status.QUEUED.value

#: What a child does when a parent ends failed or cancelled (``using(parent_failure=...)``):
#: "cancel" (the default) ends it cancelled, "run" runs it without that parent's result.
PARENT_FAILURE_CHOICES: tuple[str, ...] = ("cancel", "run")


class Ending(enum.Enum):
    """How one attempt ended: the one vocabulary of the worker's log line, the signals and the
    metrics, which are rendered from it and never parsed back from text.

    ``status`` is the job's status once the ending is recorded; ``metric`` the ``outcome``
    label of ``jobqueue_jobs_finished_total`` (None: the job has not finished, or another
    worker owns it now); ``phrase`` the log line's ``outcome=`` text and ``detailed`` how a
    detail joins it (:meth:`render`: ``failed, retry in 1.2s``, ``discarded (lease lost)``).
    """

    COMPLETED = ("completed", Status.COMPLETED.value, "completed")
    RETRIED = ("retried", Status.QUEUED.value, None, "failed", "{}, {}")
    DEAD_LETTERED = ("dead-lettered", Status.FAILED.value, "failed")
    CANCELLED = ("cancelled", Status.CANCELLED.value, "cancelled")
    #: The run lost its lease (or its claim was rolled back): its outcome is not recorded.
    DISCARDED = ("discarded", None, None)

    def __init__(
        self,
        word: str,
        status: str | None,
        metric: str | None,
        phrase: str = "",
        detailed: str = "{} ({})",
    ) -> None:
        self.word = word
        self.status = status
        self.metric = metric
        self.phrase = phrase or word
        self.detailed = detailed

    def render(self, detail: str = "") -> str:
        """The log line's ``outcome=`` text of this ending, with ``detail`` if any."""
        return self.detailed.format(self.phrase, detail) if detail else self.phrase

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
    #: The job sets no ``result_ttl`` of its own and ``RESULT_TTL`` is per outcome: it is
    #: kept for its outcome's time, decided when it ends (``result_ttl`` holds the
    #: completed one).
    ttl_by_outcome: bool = False
    #: ``.using(metadata={...})``: the caller's JSON object, kept with the job, never passed
    #: to it as arguments.
    metadata: dict[str, Any] | None = None
    #: What the classes of ``JOBQUEUE["CONTEXT"]`` captured in the caller, by dotted path
    #: (:mod:`django_jobqueue.propagation`); None: nothing captured.
    context: dict[str, Any] | None = None

    def with_id(self, job_id: str) -> NewJob:
        return dataclasses.replace(self, job_id=job_id)


#: The columns of a new job's INSERT, spelled once: the fields of :class:`NewJob`.
NEW_JOB_COLUMNS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(NewJob))

#: Fields of :class:`NewJob` that only a queued job needs: when it may start and whether
#: someone waits for it. A dead letter keeps every other one.
QUEUED_ONLY_FIELDS: frozenset[str] = frozenset({"run_after", "notify"})
#: The fields of a job its ``DeadLetter`` keeps (one column each), so that requeue can write
#: the job again: the dead-letter copy, requeue and the dead-letter admin derive from it.
DEAD_LETTER_FIELDS: tuple[str, ...] = tuple(
    name for name in NEW_JOB_COLUMNS if name not in QUEUED_ONLY_FIELDS
)
#: What requeueing a dead letter writes afresh rather than copies: the job runs at once
#: (``run_after``), nobody waits for it yet (``notify``), it is enqueued now
#: (``enqueued_at``), and a task's attempt log starts again (``attempt_log``).
REQUEUE_FRESH_FIELDS: frozenset[str] = QUEUED_ONLY_FIELDS | {"enqueued_at", "attempt_log"}
#: The fields requeue copies back from a dead letter: its job's own, as enqueued.
REQUEUE_FIELDS: tuple[str, ...] = tuple(
    name for name in DEAD_LETTER_FIELDS if name not in REQUEUE_FRESH_FIELDS
)


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


#: Serials of :attr:`ClaimedJob.claim` (``next()`` on it is atomic under the GIL).
_CLAIMS = itertools.count(1)


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
    #: "cancel" or "run" for a job with parents (workflows), "" for one without.
    parent_failure: str = ""
    metadata: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    #: This claim's serial in this process, not stored: two claims of one job that share
    #: a fence (a claim rolled back leaves the attempt unchanged) are still told apart.
    claim: int = dataclasses.field(
        default_factory=lambda: next(_CLAIMS), init=False, compare=False, repr=False
    )

    @property
    def fence(self) -> tuple[int, int]:
        """``(id, attempts)``: what every write of this run is conditioned on."""
        return (self.id, self.attempts)


#: The columns a claim returns, in :class:`ClaimedJob`'s order (its fields but ``claim``).
CLAIM_COLUMNS: tuple[str, ...] = tuple(
    field.name for field in dataclasses.fields(ClaimedJob) if field.init
)


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
    metadata: dict[str, Any] | None = None

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
            metadata=job.metadata,
        )

    @property
    def state(self) -> JobState:
        return JobState(self.status, self.attempts, self.result, self.error)
