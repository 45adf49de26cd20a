"""Exceptions raised by django-jobqueue. All of them subclass :class:`JobQueueError`."""

from __future__ import annotations


class JobQueueError(Exception):
    """Base class of every error django-jobqueue raises on purpose."""


class InvalidJobError(JobQueueError, ValueError):
    """A job, an option or a job id was given a value it cannot take; nothing was written."""


class SerializationError(JobQueueError, TypeError):
    """An argument or result would not come back equal through JSON; nothing was written.

    ``path`` names the offending value, for example ``args[1]['when']``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class JobNotRegistered(JobQueueError, LookupError):
    """No ``@job`` function is registered under ``name``."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"No job is registered as {name!r}. Decorate the function with @job in a "
            "'jobs' module of an installed app (or import its module) and deploy it to "
            "every worker."
        )
        self.name = name


class JobTimeoutError(JobQueueError, TimeoutError):
    """Waiting for a job's result took longer than ``timeout`` seconds.

    Only the waiting stops: the job itself stays queued or running and its result is
    stored as usual, so ``get_job(job_id)`` can read it later. ``status`` is the job's status
    when the wait gave up, if known.
    """

    def __init__(
        self, job_id: str, timeout: float, *, status: str | None = None, queue: str | None = None
    ) -> None:
        if status == "queued" and queue is not None:
            where = (
                "it is still queued and no worker has started it: is `manage.py "
                f"runjobworker` running and serving queue {queue!r}? It stays queued"
            )
        else:
            where = "it keeps running"
        super().__init__(
            f"Job {job_id!r} did not finish within {timeout:g} seconds; {where}, "
            f"read its result later with get_job({job_id!r})."
        )
        self.job_id = job_id
        self.timeout = timeout
        self.status = status


class JobFailedError(JobQueueError):
    """The job failed on its last attempt (it is now a dead letter); ``error`` is its last error."""

    def __init__(self, job_id: str, error: str) -> None:
        super().__init__(f"Job {job_id!r} failed: {error}")
        self.job_id = job_id
        self.error = error
