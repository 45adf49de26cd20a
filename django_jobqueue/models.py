"""Jobs, their results and dead letters, stored in the project's own database.

Each index serves one query, named in ``Meta.indexes`` beside it; which query each serves,
and why, is the table "Indexes" of docs/reference/api.md (one place for it).

The conditions name the statuses through :mod:`django_jobqueue.base` (``Status``,
``ACTIVE``, ``FINISHED``), never by hand: a status added there changes them, and
``makemigrations`` writes the migration.

The partial indexes only hold the rows they serve, so they stay small when millions of
finished jobs wait to be pruned, and a claim is an index range scan however long the
backlog.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from .base import ACTIVE, FINISHED, INITIAL_STATUS, JobSnapshot, Status
from .limits import STORED_MAX_LENGTH
from .options import JOB_ID_MAX_LENGTH
from .querysets import (
    DeadLetterQuerySet,
    JobQuerySet,
    ScheduleQuerySet,
    WorkerHeartbeatQuerySet,
)

__all__ = [
    "ACTIVE",
    "FINISHED",
    "DeadLetter",
    "Job",
    "JobBatch",
    "JobDependency",
    "JobResult",
    "LimitStart",
    "Schedule",
    "Status",
    "WorkerHeartbeat",
]


class Job(models.Model):
    """One run of a job: its arguments, its place in the queue and its lease.

    ``id`` is an internal sequence (it orders a group's jobs); ``job_id`` is the public,
    unique id users pass to ``using(job_id=...)`` and ``get_job()``.
    """

    id = models.BigAutoField(primary_key=True)
    job_id = models.CharField("job id", max_length=JOB_ID_MAX_LENGTH)  # unique: Meta
    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=INITIAL_STATUS)
    priority = models.IntegerField(default=0)
    group = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: no group
    run_after = models.DateTimeField(null=True, blank=True, help_text="Empty: run at once.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    result_ttl = models.PositiveIntegerField(help_text="Seconds the outcome is kept.")
    notify = models.BooleanField(
        default=False, help_text="Someone waits for this job: send 'finished' when it ends."
    )
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    cancel_requested = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Someone asked the running job to stop (handle.cancel()).",
    )
    progress = models.JSONField(
        null=True, blank=True, help_text="The last JobContext.set_progress() of the job."
    )
    time_limit = models.FloatField(
        null=True, blank=True, help_text="Seconds an attempt may run; empty: no limit."
    )
    limit_key = models.CharField(  # noqa: DJ001 - NULL: no limit
        "limit",
        max_length=STORED_MAX_LENGTH,
        null=True,
        blank=True,
        help_text="A key of JOBQUEUE['LIMITS'], or several, one a line (all held at once).",
    )
    attempt_log = models.JSONField(
        null=True,
        blank=True,
        help_text=(
            "Tasks of Django's Tasks framework only: each failed attempt's worker, start, "
            "exception class and traceback. Empty for @job jobs."
        ),
    )

    trace_context = models.JSONField(
        null=True,
        blank=True,
        help_text="The producer's OpenTelemetry trace context, carried to the run's span.",
    )
    ttl_by_outcome = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Kept for RESULT_TTL's time of its outcome (result_ttl: the completed one).",
    )
    has_children = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Some job runs after this one (workflows): its ending releases them.",
    )
    waiting_for = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Parents of a blocked job that have not ended yet."
    )
    batch_id = models.CharField(  # noqa: DJ001 - NULL: in no batch
        "batch",
        max_length=64,
        null=True,
        blank=True,
        help_text="The batch this job joined (workflows): its ending is counted there.",
    )
    parent_failure = models.CharField(
        max_length=6,
        blank=True,
        default="",
        db_default="",
        help_text="What this job does when a parent fails: 'cancel' or 'run' (empty: no parents).",
    )
    metadata = models.JSONField(
        null=True, blank=True, help_text=".using(metadata={...}): kept with the job, not passed."
    )
    context = models.JSONField(
        null=True,
        blank=True,
        help_text="What JOBQUEUE['CONTEXT']'s classes captured at enqueue, by dotted path.",
    )
    rerun = models.JSONField(
        null=True,
        blank=True,
        help_text=(
            "One more run asked for while this one ran (on_duplicate='rerun'): its args, "
            "kwargs and priority. Queued once this run has finished."
        ),
    )

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["job_id"], name="djq_job_id")]
        indexes = [
            models.Index(
                models.F("priority").desc(),
                "id",
                name="djq_claim_any",
                condition=Q(status=Status.QUEUED, limit_key__isnull=True),
            ),
            models.Index(
                "queue",
                models.F("priority").desc(),
                "id",
                name="djq_claim_queue",
                condition=Q(status=Status.QUEUED, limit_key__isnull=True),
            ),
            models.Index(
                "id",
                name="djq_rerun",
                condition=Q(rerun__isnull=False),
            ),
            models.Index(
                "limit_key",
                models.F("priority").desc(),
                "id",
                name="djq_limit_queued",
                condition=Q(status=Status.QUEUED, limit_key__isnull=False),
            ),
            models.Index(
                fields=["group", "id"],
                name="djq_group_active",
                condition=Q(status__in=ACTIVE, group__isnull=False),
            ),
            models.Index(
                fields=["lease_expires_at"], name="djq_lease", condition=Q(status=Status.RUNNING)
            ),
            models.Index(
                fields=["expires_at"],
                name="djq_expiry",
                condition=Q(status__in=FINISHED),
            ),
            models.Index(fields=["queue"], name="djq_blocked", condition=Q(status=Status.BLOCKED)),
            models.Index(
                fields=["batch_id", "id"], name="djq_batch", condition=Q(batch_id__isnull=False)
            ),
            models.Index(
                fields=["limit_key"],
                name="djq_limit_running",
                condition=Q(status=Status.RUNNING, limit_key__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.job_id

    @property
    def duration(self) -> float | None:
        """Seconds between the last start and the finish, if both happened."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    def snapshot(self, *, created: bool = False) -> JobSnapshot:
        """This job as plain data; reads ``outcome`` only if it was selected with the job
        (``select_related("outcome")``) or the job finished."""
        finished = self.status in FINISHED
        outcome = getattr(self, "outcome", None) if finished else None
        if self.status == Status.FAILED and outcome is not None:
            error = outcome.error
        else:
            error = self.last_error
        return JobSnapshot(
            self.job_id,
            self.name,
            self.queue,
            self.status,
            pk=self.pk,
            result=outcome.result if outcome is not None else None,
            error=error,
            attempts=self.attempts,
            created=created,
            enqueued_at=self.enqueued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            progress=self.progress,
            metadata=self.metadata,
        )

    def is_expired(self, now: Any = None) -> bool:
        """True once a finished job's outcome is past its ``result_ttl``."""
        return (
            self.status in FINISHED
            and self.expires_at is not None
            and self.expires_at <= (now or timezone.now())
        )


class JobDependency(models.Model):
    """``child`` runs after the job ``parent_job_id`` (``using(after=...)``).

    The parent is named by its public id: a parent dead-lettered and requeued is a new row
    with the same id, and its children follow it. Rows go with their child (pruned, deleted);
    a parent is kept while a child of it has not finished (pruning skips it).
    """

    child = models.ForeignKey(
        Job,
        on_delete=models.CASCADE,  # by Django's delete(); pruning deletes them with the job
        related_name="parent_links",
        db_constraint=False,  # written with the child, deleted with it: no lock for nothing
    )
    parent_job_id = models.CharField("parent job id", max_length=JOB_ID_MAX_LENGTH)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["child", "parent_job_id"], name="djq_dependency")
        ]
        indexes = [models.Index(fields=["parent_job_id"], name="djq_dependency_parent")]

    def __str__(self) -> str:
        return f"{self.child_id} after {self.parent_job_id}"


class JobBatch(models.Model):
    """A batch of jobs (``with batch(...)``): its counters, updated by each job's ending in
    the transaction that records it, and its callbacks, enqueued once in the transaction
    that records the last ending (or seals the batch, if its jobs finished first)."""

    id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=200, blank=True, default="")
    total = models.PositiveIntegerField(default=0, help_text="Jobs in the batch, once sealed.")
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    sealed = models.BooleanField(default=False, help_text="Its with-block ended: no job joins.")
    callbacks_done = models.BooleanField(default=False)
    on_success = models.JSONField(null=True, blank=True, help_text="The callback job's row.")
    on_complete = models.JSONField(null=True, blank=True, help_text="The callback job's row.")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "job batches"

    def __str__(self) -> str:
        return self.name or self.id

    @property
    def pending(self) -> int:
        """Jobs not finished yet (of those enqueued so far, before it is sealed)."""
        return max(0, self.total - self.completed - self.failed - self.cancelled)


class JobResult(models.Model):
    """The outcome of a finished job: its return value, or its last error and traceback."""

    job = models.OneToOneField(
        Job,
        primary_key=True,
        on_delete=models.CASCADE,  # done by Django's delete() (pruning, admin, requeue)
        related_name="outcome",
        # No database FOREIGN KEY: its check would lock the job row of every completion
        # (FOR KEY SHARE, at commit) for nothing: results are only written by the completion
        # statement, joined to the job rows it updates, and deleted with their jobs.
        db_constraint=False,
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"result of {self.job_id}"


class LimitStart(models.Model):
    """One start of a job under a ``rate`` limit, when the limits are held in the database:
    the sliding window of a key is its rows of the last period (older ones are deleted by the
    next claim of the key). ``started_at`` is the database's clock on PostgreSQL."""

    key = models.CharField(max_length=200)
    started_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["key", "started_at"], name="djq_limit_start")]

    def __str__(self) -> str:
        return f"{self.key} at {self.started_at}"


class DeadLetter(models.Model):
    """A job that failed ``max_attempts`` times (or could not run at all), kept for an operator.

    It outlives the job's ``result_ttl``; requeueing it runs the job again with the same id,
    arguments and options and deletes the dead letter, in one transaction. It has a column
    for each of :data:`~django_jobqueue.base.DEAD_LETTER_FIELDS` (a field added to
    :class:`~django_jobqueue.base.NewJob` needs one here too, and a migration).
    """

    job_id = models.CharField("job id", max_length=JOB_ID_MAX_LENGTH, db_index=True)
    name = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.IntegerField(default=0)
    group = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL: no group
    max_attempts = models.PositiveIntegerField()
    result_ttl = models.PositiveIntegerField()
    time_limit = models.FloatField(null=True, blank=True)
    limit_key = models.CharField(  # noqa: DJ001
        "limit", max_length=STORED_MAX_LENGTH, null=True, blank=True
    )
    attempt_log = models.JSONField(
        null=True, blank=True, help_text="A task's failed attempts (see Job.attempt_log)."
    )
    trace_context = models.JSONField(
        null=True, blank=True, help_text="The producer's OpenTelemetry trace context."
    )
    ttl_by_outcome = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Kept for RESULT_TTL's time of its outcome (result_ttl: the completed one).",
    )
    metadata = models.JSONField(null=True, blank=True, help_text="The job's metadata.")
    context = models.JSONField(
        null=True, blank=True, help_text="What JOBQUEUE['CONTEXT'] captured at enqueue."
    )
    attempts = models.PositiveIntegerField()
    error = models.TextField()
    traceback = models.TextField(blank=True, default="")
    enqueued_at = models.DateTimeField()
    failed_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        ordering = ["-failed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.name})"

    @property
    def error_summary(self) -> str:
        """The last line of the error, for list displays."""
        lines = self.error.strip().splitlines()
        return lines[-1] if lines else ""


class Schedule(models.Model):
    """The state of one periodic job (``@job(schedule=...)`` or ``JOBQUEUE["SCHEDULE"]``).

    The definition lives in code and settings; this row holds what workers share: the last
    tick enqueued (the guard that makes each tick run once), whether an operator paused it,
    and ``since``, the moment from which its ticks count (when the schedule was first seen,
    its cron expression changed, or it was resumed): a tick before it is never run.
    """

    name = models.CharField(max_length=200, primary_key=True)
    job = models.CharField(max_length=200, help_text="The job's registered name.")
    cron = models.CharField(max_length=200, help_text="As configured when last seen.")
    paused = models.BooleanField(default=False)
    since = models.DateTimeField(
        default=timezone.now, help_text="Ticks after this moment run (first seen or resumed)."
    )
    last_tick = models.DateTimeField(null=True, blank=True)
    last_job_id = models.CharField("last job id", max_length=JOB_ID_MAX_LENGTH, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WorkerHeartbeat(models.Model):
    """A running ``runjobworker``: written on its heartbeat timer, deleted when it exits.

    A row whose ``last_seen`` is older than ``LEASE_SECONDS`` belongs to a worker that died
    (killed, host gone): any live worker deletes it.
    """

    name = models.CharField(max_length=200, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(null=True, blank=True, help_text="Empty: every queue.")
    concurrency = models.PositiveIntegerField()
    scheduling = models.BooleanField(help_text="Takes part in enqueueing periodic jobs.")
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    jobs_running = models.PositiveIntegerField(default=0)
    jobs_done = models.PositiveBigIntegerField(default=0)

    objects = WorkerHeartbeatQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "live worker"
        verbose_name_plural = "live workers"

    def __str__(self) -> str:
        return self.name


class QueuePause(models.Model):
    """A paused queue (``pause_queue()``, ``manage.py jobqueue pause``, the admin's overview).

    While the row exists no worker claims a job of ``queue``: the claim's selection skips
    queues that have a row here (one anti-join probe of this small table's primary key per
    job it looks at). Enqueueing goes on, and jobs already running finish. Deleting the row
    resumes the queue. Queues exist by use, so a queue with no job yet can be paused too.
    """

    queue = models.CharField(max_length=100, primary_key=True)
    reason = models.TextField(blank=True, default="")
    paused_by = models.CharField(max_length=150, blank=True, default="")
    paused_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["queue"]
        verbose_name = "paused queue"
        verbose_name_plural = "paused queues"

    def __str__(self) -> str:
        return self.queue
