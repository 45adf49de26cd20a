"""The registry of ``@job`` functions, by name. Workers run only what is registered here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured

from .base import NewJob
from .exceptions import JobNotRegistered


class RegisteredJob(Protocol):
    """What the registry holds: a job a worker can run by name (``@job``'s
    :class:`~django_jobqueue.decorators.JobFunction`, a task's ``TaskJob``).

    Declared here, below :mod:`.decorators`, so the registry names no module above it: the
    members are those the worker, the scheduler, the checks and the admin read of a job
    they found by name.
    """

    @property
    def name(self) -> str: ...

    @property
    def func(self) -> Callable[..., Any]: ...

    @property
    def queue(self) -> str | None: ...

    @property
    def limit(self) -> str | None: ...

    @property
    def schedule(self) -> str | None: ...

    @property
    def takes_context(self) -> bool: ...

    @property
    def retry_on(self) -> tuple[type[BaseException], ...] | None: ...

    @property
    def is_async(self) -> bool: ...

    @property
    def atomic(self) -> bool: ...

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be retried."""
        ...

    def using(self, **options: Any) -> RegisteredJob:
        """A copy with other options (validated)."""
        ...

    def new_job(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        job_id: str | None = None,
        now: datetime | None = None,
    ) -> NewJob:
        """The row ``enqueue(*args, **kwargs)`` would write, validated."""
        ...


class Registry:
    def __init__(self) -> None:
        self._jobs: dict[str, RegisteredJob] = {}

    def register(self, job: RegisteredJob) -> None:
        """Add ``job``; a different function under a name already taken is a configuration error."""
        existing = self._jobs.get(job.name)
        if existing is not None and _origin(existing) != _origin(job):
            raise ImproperlyConfigured(
                f"Two functions are registered as job {job.name!r}: "
                f"{_origin(existing)} and {_origin(job)}. Give one of them "
                "@job(name='...')."
            )
        self._jobs[job.name] = job

    def unregister(self, name: str) -> None:
        """Forget the job ``name`` (for tests that register jobs of their own)."""
        self._jobs.pop(name, None)

    def get(self, name: str) -> RegisteredJob:
        try:
            return self._jobs[name]
        except KeyError:
            raise JobNotRegistered(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def names(self) -> list[str]:
        return sorted(self._jobs)


def _origin(job: RegisteredJob) -> str:
    return f"{job.func.__module__}.{job.func.__qualname__}"


registry = Registry()
