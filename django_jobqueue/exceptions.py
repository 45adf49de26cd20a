"""Exceptions raised by django-jobqueue. All of them subclass :class:`JobQueueError`, except
:class:`TimeLimitExceeded`, which a job's own ``except Exception:`` must not swallow."""

from __future__ import annotations

from datetime import timedelta


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


class JobCancelledError(JobQueueError):
    """The job was cancelled (``handle.cancel()``, ``cancel(job_id)`` or the admin) before it
    completed; it will not run (again)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id!r} was cancelled.")
        self.job_id = job_id


class Retry(Exception):
    """Raise it in a job to end this attempt and run the job again later.

    ``after`` is seconds or a ``timedelta`` (None: the usual exponential backoff). The attempt
    counts: past ``max_attempts`` the job is dead-lettered with ``reason`` as its error.
    """

    def __init__(self, after: float | timedelta | None = None, reason: str = "") -> None:
        if isinstance(after, timedelta):
            seconds: float | None = after.total_seconds()
        elif after is None:
            seconds = None
        elif isinstance(after, bool) or not isinstance(after, int | float):
            raise TypeError(f"Retry(after=...) takes seconds or a timedelta, not {after!r}.")
        else:
            seconds = float(after)
        if seconds is not None and not (0 <= seconds <= 366 * 86400):
            raise ValueError(
                f"Retry(after=...) must be between 0 seconds and a year, not {after!r}."
            )
        super().__init__(reason or "Retry requested by the job")
        self.after = seconds
        self.reason = reason


class TimeLimitExceeded(BaseException):
    """An attempt ran longer than its ``time_limit`` (seconds); ``None`` when unknown.

    The worker raises it inside a sync job's thread at the next Python bytecode once the limit
    has passed (never inside a blocking C call), and records the attempt as failed with this
    error, to be retried or dead-lettered like any failure. Like ``KeyboardInterrupt`` it is a
    ``BaseException``, so a job's ``except Exception:`` does not swallow it; ``finally`` blocks
    and context managers run as usual. ``async def`` jobs get ``asyncio.CancelledError``.
    """

    def __init__(self, time_limit: float | None = None) -> None:
        super().__init__(time_limit)
        self.time_limit = time_limit

    def __str__(self) -> str:
        if self.time_limit is None:
            return "the attempt ran longer than its time_limit"
        return f"the attempt ran longer than its time_limit of {self.time_limit:g}s"
