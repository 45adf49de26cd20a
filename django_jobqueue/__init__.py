"""django-jobqueue: durable jobs in your Django database, and request/response over the queue.

::

    from django_jobqueue import job

    @job
    def add(x, y):
        return x + y

    add.enqueue(1, 2)                  # fire and forget
    add.enqueue_and_wait(1, 2)         # 3, or JobTimeoutError
"""

from importlib.metadata import PackageNotFoundError, version

from .decorators import JobFunction, job
from .exceptions import (
    InvalidJobError,
    JobFailedError,
    JobNotRegistered,
    JobQueueError,
    JobTimeoutError,
    SerializationError,
)
from .handles import JobHandle, aget_job, get_job

try:
    __version__ = version("django-jobqueue")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = [
    "InvalidJobError",
    "JobFailedError",
    "JobFunction",
    "JobHandle",
    "JobNotRegistered",
    "JobQueueError",
    "JobTimeoutError",
    "SerializationError",
    "__version__",
    "aget_job",
    "get_job",
    "job",
]
