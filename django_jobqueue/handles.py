"""``JobHandle``: what ``enqueue()`` returns and ``get_job()`` finds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

if TYPE_CHECKING:
    from datetime import datetime

    from .models import Job

FINISHED = ("completed", "failed")


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
        "name",
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

    @classmethod
    def from_job(cls, job: Job, *, created: bool = False) -> JobHandle:
        handle = cls(job.job_id, name=job.name, queue=job.queue, status=job.status, created=created)
        handle._load(job)
        return handle

    def _load(self, job: Job) -> None:
        self._pk = job.pk
        self.name = job.name
        self.queue = job.queue
        self.status = job.status
        self.attempts = job.attempts
        self.enqueued_at = job.enqueued_at
        self.started_at = job.started_at
        self.finished_at = job.finished_at
        outcome = getattr(job, "outcome", None) if job.status in FINISHED else None
        self.result = outcome.result if outcome is not None else None
        if job.status == "failed":
            self.error = outcome.error if outcome is not None else job.last_error
        else:
            self.error = job.last_error

    @property
    def finished(self) -> bool:
        """True once the job completed or failed for good."""
        return self.status in FINISHED

    def refresh(self) -> JobHandle:
        """Read the job's current state from the database; return the handle itself.

        If the job's row is gone (its result expired and was pruned), the snapshot is kept.
        """
        job = _fetch(self.id)
        if job is not None:
            self._load(job)
        return self

    def _poll(self) -> JobHandle:
        """Refresh status, attempts, result and error only, with one light query (waiters)."""
        from .models import Job

        state = Job.objects.state(self.id)
        if state is not None:
            self.status, self.attempts, self.result, self.error = state
        return self

    async def arefresh(self) -> JobHandle:
        """Async twin of :meth:`refresh`."""
        job = await sync_to_async(_fetch)(self.id)
        if job is not None:
            self._load(job)
        return self

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes; return its result.

        ``timeout`` defaults to ``JOBQUEUE["WAIT_TIMEOUT"]``. Raises ``JobTimeoutError`` when
        it passes (the job keeps running) and ``JobFailedError`` if the job failed for good.
        Must not be called inside ``transaction.atomic()``.
        """
        from .waiting import wait_for_job

        return wait_for_job(self, timeout)

    async def await_result(self, timeout: float | None = None) -> Any:
        """Async twin of :meth:`wait`: holds no thread and no database connection while waiting."""
        from .waiting import await_job

        return await await_job(self, timeout)

    def __repr__(self) -> str:
        return f"<JobHandle {self.id!r} {self.name} {self.status}>"


def _fetch(job_id: str) -> Job | None:
    from .models import Job

    return Job.objects.select_related("outcome").filter(job_id=job_id).first()


def get_job(job_id: str) -> JobHandle | None:
    """Return a handle to the job ``job_id``, or None if there is no such job (any more)."""
    job = _fetch(job_id)
    return JobHandle.from_job(job) if job is not None else None


async def aget_job(job_id: str) -> JobHandle | None:
    """Async twin of :func:`get_job`."""
    return await sync_to_async(get_job)(job_id)
