"""``JobHandle``: what ``enqueue()`` returns and ``get_job()`` finds; :func:`announce`, the
one path every new job takes after its INSERT (enqueue and requeue alike); and
:func:`enqueue_jobs`, the INSERT and the announcement of ``enqueue()``, deferred to the
caller's commit when that transaction is on another database than the queue's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import transaction

from . import control, signals, tokens, waiting
from .base import FINISHED, JobSnapshot, JobState, NewJob, Status
from .exceptions import InvalidJobError
from .models import Job
from .notifications import hub
from .options import JOB_ID_MAX_LENGTH
from .producing import insert_jobs
from .routers import (
    after_commits,
    commits_first,
    database_for,
    queue_database,
    queue_databases,
    routed,
)

if TYPE_CHECKING:
    from datetime import datetime

    from .querysets import JobQuerySet


class JobHandle:
    """A snapshot of one job, by its id: ``status``, ``result``, ``error``, ``attempts``.

    The snapshot is taken when the handle is made; ``refresh()`` reads the database again and
    ``wait()`` blocks until the job has finished. ``created`` is True when the call that made
    the handle queued a new run, False when it found an existing one (deduplication).
    """

    __slots__ = (
        "_pk",
        "attempts",
        "created",
        "enqueued_at",
        "error",
        "finished_at",
        "id",
        "metadata",
        "name",
        "progress",
        "queue",
        "result",
        "started_at",
        "status",
    )

    def __init__(
        self,
        id: str,
        *,
        name: str,
        queue: str,
        status: str,
        pk: int | None = None,
        result: Any = None,
        error: str = "",
        attempts: int = 0,
        created: bool = False,
        enqueued_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        progress: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self._pk = pk
        self.name = name
        self.queue = queue
        self.status = status
        self.result = result
        self.error = error
        self.attempts = attempts
        self.created = created
        self.enqueued_at = enqueued_at
        self.started_at = started_at
        self.finished_at = finished_at
        #: The job's last reported progress: ``{"current", "total", "message",
        #: "updated_at"}``, or None (see ``JobContext.set_progress``).
        self.progress = progress
        #: ``.using(metadata={...})`` of the job, or None.
        self.metadata = metadata

    @classmethod
    def from_snapshot(cls, snapshot: JobSnapshot) -> JobHandle:
        return cls(
            snapshot.id,
            name=snapshot.name,
            queue=snapshot.queue,
            status=snapshot.status,
            pk=snapshot.pk,
            result=snapshot.result,
            error=snapshot.error,
            attempts=snapshot.attempts,
            created=snapshot.created,
            enqueued_at=snapshot.enqueued_at,
            started_at=snapshot.started_at,
            finished_at=snapshot.finished_at,
            progress=snapshot.progress,
            metadata=snapshot.metadata,
        )

    @classmethod
    def from_job(cls, job: Job, *, created: bool = False) -> JobHandle:
        return cls.from_snapshot(job.snapshot(created=created))

    def _load(self, snapshot: JobSnapshot) -> None:
        self._pk = snapshot.pk
        self.name = snapshot.name
        self.queue = snapshot.queue
        self.enqueued_at = snapshot.enqueued_at
        self.started_at = snapshot.started_at
        self.finished_at = snapshot.finished_at
        self.progress = snapshot.progress
        self.metadata = snapshot.metadata
        self._apply(snapshot.state)

    def _take(self, other: JobHandle) -> None:
        """Become ``other``: the handle of the same job, as written."""
        for name in JobHandle.__slots__:
            setattr(self, name, getattr(other, name))

    def _apply(self, state: JobState) -> None:
        self.status = state.status
        self.attempts = state.attempts
        self.result = state.result
        self.error = state.error

    @property
    def _state(self) -> JobState:
        return JobState(self.status, self.attempts, self.result, self.error)

    @property
    def finished(self) -> bool:
        """True once the job completed, failed for good or was cancelled."""
        return self.status in FINISHED

    def refresh(self) -> JobHandle:
        """Read the job's current state from the database; return the handle itself.

        If the job's row is gone (its result expired and was pruned), the snapshot is kept.
        """
        snapshot = self._jobs().snapshot(self.id)
        if snapshot is not None:
            self._load(snapshot)
        return self

    def _jobs(self) -> JobQuerySet:
        """The jobs of this job's database (its queue's alias)."""
        return Job.objects.using(queue_database(self.queue))

    async def arefresh(self) -> JobHandle:
        """Async twin of :meth:`refresh`."""
        snapshot = await sync_to_async(lambda: self._jobs().snapshot(self.id))()
        if snapshot is not None:
            self._load(snapshot)
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes; return its result.

        ``timeout`` defaults to ``JOBQUEUE["WAIT_TIMEOUT"]``. Raises ``JobTimeoutError`` when
        it passes (the job keeps running) and ``JobFailedError`` if the job failed for good.
        Must not be called inside ``transaction.atomic()``.
        """
        seconds = waiting.resolve_timeout(timeout)
        self._apply(waiting.wait_for_job(self.id, self.queue, self._state, seconds))
        return waiting.outcome(self.id, self._state)

    async def await_result(self, timeout: float | None = None) -> Any:
        """Async twin of :meth:`wait`: holds no thread and no database connection while waiting."""
        seconds = waiting.resolve_timeout(timeout)
        self._apply(await waiting.await_job(self.id, self.queue, self._state, seconds))
        return waiting.outcome(self.id, self._state)

    def watch_token(self, max_age: float = tokens.DEFAULT_MAX_AGE) -> str:
        """A signed token with which a page can follow this job live, for ``max_age`` seconds
        (an hour by default, a week at most).

        Hand it to the page: ``watch.js`` opens ``ws/jobqueue/jobs/<token>/`` with it (see
        ``django_jobqueue.routing``), or polls the JSON status view of
        ``django_jobqueue.urls``. The token is the job id signed with ``SECRET_KEY``
        (``django.core.signing``) and its expiry: it cannot be made from a guessed id, and
        it stops working after ``max_age`` (a socket already open stays open until the
        job ends). It is signed, not encrypted: the page can read the job id in it. It names
        this run of the job: a later run that reuses the id is not shown with it.
        """
        run = self._pk
        if run is None:
            run = self._jobs().filter(job_id=self.id).values_list("pk", flat=True).first()
        return tokens.make(self.id, max_age, run=run)

    def cancel(self) -> bool:
        """Cancel this job (see :func:`django_jobqueue.cancel`) and refresh the handle.

        True when a queued job was cancelled or a running one asked to stop; False when it
        had already finished (it is left unchanged)."""
        done = control.cancel(self.id, using=queue_database(self.queue))
        self.refresh()
        return done

    async def acancel(self) -> bool:
        """Async twin of :meth:`cancel`."""
        done = await control.acancel(self.id, using=queue_database(self.queue))
        await self.arefresh()
        return done

    def __repr__(self) -> str:
        return f"<JobHandle {self.id!r} {self.name} {self.status}>"


def get_job(job_id: str) -> JobHandle | None:
    """Return a handle to the job ``job_id``, or None if there is no such job (any more).

    An id no job can have (empty, longer than the column, with a NUL or a lone surrogate)
    gives None without a query, the same on every database, so a view can pass on what
    it was given; an id that is not a str raises ``InvalidJobError``.
    """
    if not _storable_id(job_id):
        return None
    for alias in queue_databases():  # queues on databases of their own: each in turn
        snapshot = Job.objects.using(alias).snapshot(job_id)
        if snapshot is not None:
            return JobHandle.from_snapshot(snapshot)
    return None


async def aget_job(job_id: str) -> JobHandle | None:
    """Async twin of :func:`get_job`."""
    if not _storable_id(job_id):
        return None
    return await sync_to_async(get_job)(job_id)


def _storable_id(job_id: Any) -> bool:
    """False for a str that no job id column can hold (PostgreSQL raises on a NUL or a lone
    surrogate, SQLite does not): looking it up could only find nothing."""
    if not isinstance(job_id, str):
        raise InvalidJobError(
            f"job_id must be a str, not {type(job_id).__name__}: {job_id!r:.100}."
        )
    if not 0 < len(job_id) <= JOB_ID_MAX_LENGTH or "\x00" in job_id:
        return False
    if job_id.isascii():
        return True
    try:
        job_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def announce(
    snapshots: Iterable[JobSnapshot], *, using: str | None = None, waited_for: bool = False
) -> list[JobHandle]:
    """After an INSERT: wake the new jobs' workers when the transaction commits (at once
    outside one) and send ``job_enqueued`` for each new job (a raising receiver is logged,
    never raised: the jobs are written). Returns a handle per snapshot, in order.

    ``waited_for``: the INSERT also marked existing jobs as waited for, which locks their
    rows for a moment, so a worker claiming then may have passed over them: their queues
    are woken too."""
    handles = [JobHandle.from_snapshot(snapshot) for snapshot in snapshots]
    using = using or queue_database(handles[0].queue if handles else None)
    queues = {handle.queue for handle in handles if handle.created}
    if waited_for:
        queues.update(h.queue for h in handles if not h.created and h.status == Status.QUEUED)
    if queues:
        transaction.on_commit(lambda: hub().wake_workers(queues), using=using)
    if signals.job_enqueued.has_listeners():
        for handle in handles:
            if handle.created:
                signals.send_robust(signals.job_enqueued, sender=Job, handle=handle)
    return handles


def enqueue_jobs(
    jobs: Sequence[NewJob],
    *,
    insert: Callable[[Sequence[NewJob]], list[JobSnapshot]] = insert_jobs,
    before_announce: Callable[[], None] | None = None,
) -> list[JobHandle]:
    """Write ``jobs`` with ``insert`` (:func:`~.producing.insert_jobs`, or a workflow's or a
    duplicate policy's variant of it), then :func:`announce` them (``before_announce`` is
    called between the two); a handle per job, in order.

    Inside ``transaction.atomic()`` on the queue's database the jobs are written in that
    transaction. Inside ``atomic()`` on other databases only (``JOBQUEUE["DATABASE"]``), they
    cannot be: the write waits until each of those transactions has committed, and a
    rollback writes no job. The handles are then returned at once, with their ids, "queued"
    and ``created`` as the INSERT would make them, and take the rows' state once written
    (an existing job's, for a duplicate id). A crash between the two commits loses the jobs
    (docs/guide/production.md). Jobs whose queue has a database of its own
    (``JOBQUEUE["QUEUES"]``) are written there, the same way (:func:`~.routers.routed`)."""
    alias = database_for(job.queue for job in jobs)
    with routed(alias):
        using = queue_database()
        aliases = commits_first(using)
        if not aliases:
            return _write(jobs, insert, before_announce, using)
    handles = [JobHandle.from_snapshot(JobSnapshot.of_new(new)) for new in jobs]

    def write() -> None:
        with routed(alias):
            written_now = _write(jobs, insert, before_announce, using)
        for handle, written in zip(handles, written_now, strict=True):
            handle._take(written)

    after_commits(aliases, write)
    return handles


def _write(
    jobs: Sequence[NewJob],
    insert: Callable[[Sequence[NewJob]], list[JobSnapshot]],
    before_announce: Callable[[], None] | None,
    using: str,
) -> list[JobHandle]:
    snapshots = insert(jobs)
    if before_announce is not None:
        before_announce()
    return announce(snapshots, using=using)
