"""django-jobqueue: durable jobs in your Django database, and request/response over the queue.

::

    from django_jobqueue import job

    @job
    def add(x, y):
        return x + y

    add.enqueue(1, 2)                  # fire and forget
    add.enqueue_and_wait(1, 2)         # 3, or JobTimeoutError

The package's face imports nothing that needs the app registry: ``import django_jobqueue``
is safe in settings and before ``django.setup()``. Each public name is imported from its
module the first time it is used (PEP 562).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from .batches import batch, get_batch
    from .canvas import chain, group
    from .context import JobContext
    from .control import acancel, cancel
    from .decorators import JobFunction, job
    from .exceptions import (
        InvalidJobError,
        JobCancelledError,
        JobFailedError,
        JobNotRegistered,
        JobQueueError,
        JobTimeoutError,
        Retry,
        SerializationError,
        TimeLimitExceeded,
    )
    from .handles import JobHandle, aget_job, get_job
    from .pauses import apause_queue, aresume_queue, pause_queue, resume_queue

#: Public name -> the module that defines it.
_EXPORTS = {
    "InvalidJobError": "exceptions",
    "JobCancelledError": "exceptions",
    "JobContext": "context",
    "Retry": "exceptions",
    "acancel": "control",
    "apause_queue": "pauses",
    "aresume_queue": "pauses",
    "pause_queue": "pauses",
    "resume_queue": "pauses",
    "cancel": "control",
    "JobFailedError": "exceptions",
    "JobFunction": "decorators",
    "JobHandle": "handles",
    "JobNotRegistered": "exceptions",
    "JobQueueError": "exceptions",
    "JobTimeoutError": "exceptions",
    "SerializationError": "exceptions",
    "TimeLimitExceeded": "exceptions",
    "aget_job": "handles",
    "batch": "batches",
    "chain": "canvas",
    "get_batch": "batches",
    "group": "canvas",
    "get_job": "handles",
    "job": "decorators",
}

__all__ = [
    "InvalidJobError",
    "JobCancelledError",
    "JobContext",
    "JobFailedError",
    "JobFunction",
    "JobHandle",
    "JobNotRegistered",
    "JobQueueError",
    "JobTimeoutError",
    "Retry",
    "SerializationError",
    "TimeLimitExceeded",
    "__version__",
    "acancel",
    "aget_job",
    "apause_queue",
    "aresume_queue",
    "batch",
    "cancel",
    "chain",
    "get_batch",
    "get_job",
    "group",
    "job",
    "pause_queue",
    "resume_queue",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # read from the installed metadata when asked, not at import
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'django_jobqueue' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("django-jobqueue")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
