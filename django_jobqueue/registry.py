"""The registry of ``@job`` functions, by name. Workers run only what is registered here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from .exceptions import JobNotRegistered

if TYPE_CHECKING:
    from .decorators import JobFunction


class Registry:
    def __init__(self) -> None:
        self._jobs: dict[str, JobFunction[Any, Any]] = {}

    def register(self, job: JobFunction[Any, Any]) -> None:
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

    def get(self, name: str) -> JobFunction[Any, Any]:
        try:
            return self._jobs[name]
        except KeyError:
            raise JobNotRegistered(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    def names(self) -> list[str]:
        return sorted(self._jobs)


def _origin(job: JobFunction[Any, Any]) -> str:
    return f"{job.func.__module__}.{job.func.__qualname__}"


registry = Registry()
