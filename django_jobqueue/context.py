"""``JobContext``: what a running job may know of its own run, and the two things it may do
(report progress, notice a cancel request).

The worker makes one per attempt and hands it to jobs declared ``@job(takes_context=True)``.
It reads no database itself: the worker gives it a ``cancelled`` flag it sets when a cancel
request arrives, and a ``report`` callback that keeps the latest progress for the worker to
write (throttled; the last value always lands).

It also holds the built-in context classes of ``JOBQUEUE["CONTEXT"]``
(:mod:`django_jobqueue.propagation`): :class:`Locale` and :class:`TraceContext`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from django.utils import timezone, translation

from . import telemetry
from .exceptions import InvalidJobError

if TYPE_CHECKING:
    from .base import ClaimedJob

#: Longest progress message kept, in characters.
MESSAGE_MAX_LENGTH = 1000

Progress = dict[str, Any]

#: The run a worker is executing in this thread (sync jobs) or task (``async def`` jobs),
#: set just before the job's function is called. A narrow hook for code that wraps a job's
#: function (the ``django.tasks`` backend reads it to build its ``TaskResult``); jobs
#: themselves should take a :class:`JobContext`.
current_run: ContextVar[ClaimedJob | None] = ContextVar("django_jobqueue_current_run", default=None)


class JobContext:
    """The facts of the running attempt, read-only, plus :meth:`set_progress` and
    :attr:`cancel_requested`.

    ``attempt`` counts from 1; ``worker`` is the worker's name (``host:pid:random`` unless
    ``runjobworker --name`` set it).
    """

    __slots__ = (
        "_attempt",
        "_cancelled",
        "_job_id",
        "_max_attempts",
        "_metadata",
        "_parent_results",
        "_parents",
        "_queue",
        "_report",
        "_worker",
        "progress",
    )

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        max_attempts: int,
        queue: str,
        worker: str,
        cancelled: threading.Event | None = None,
        report: Callable[[Progress], None] | None = None,
        parents: Callable[[], dict[str, Any]] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._job_id = job_id
        self._parents = parents
        self._parent_results: MappingProxyType[str, Any] | None = None
        self._attempt = attempt
        self._max_attempts = max_attempts
        self._queue = queue
        self._worker = worker
        self._cancelled = cancelled if cancelled is not None else threading.Event()
        self._report = report
        self._metadata = metadata
        #: The last value given to :meth:`set_progress` (None before the first call).
        self.progress: Progress | None = None

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._job_id

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self._attempt

    @property
    def max_attempts(self) -> int:
        """Attempts allowed in all."""
        return self._max_attempts

    @property
    def queue(self) -> str:
        """The queue the job was taken from."""
        return self._queue

    @property
    def worker(self) -> str:
        """The name of the worker running it."""
        return self._worker

    @property
    def parent_results(self) -> Mapping[str, Any]:
        """``{parent job id: its result}`` of the jobs this one ran after (``using(after=...)``,
        chains and groups), read-only; empty for a job without parents. A parent that failed
        or was cancelled (``parent_failure="run"``) is missing. Read from the database on
        first use (an ``async def`` job's are read before it starts)."""
        if self._parent_results is None:
            self._parent_results = MappingProxyType(self._parents() if self._parents else {})
        return self._parent_results

    def load_parent_results(self) -> None:
        """Read :attr:`parent_results` now (before an ``async def`` job starts, on a thread
        where the database may be used)."""
        self.parent_results  # noqa: B018 - read for its side effect

    @property
    def metadata(self) -> dict[str, Any] | None:
        """The job's ``.using(metadata={...})``, or None."""
        return self._metadata

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this attempt dead-letters the job."""
        return self._attempt >= self._max_attempts

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked this job to stop. Check it between steps and return
        early: the job ends ``cancelled`` whatever it returns or raises afterwards."""
        return self._cancelled.is_set()

    def set_progress(self, current: float, total: float | None = None, message: str = "") -> None:
        """Report how far the job has got: ``current`` of ``total`` (any unit), and a short
        ``message``. Cheap to call often: the worker writes it at most every
        ``PROGRESS_INTERVAL`` seconds, and always writes the last value before the outcome.
        """
        if not _number(current) or (total is not None and not _number(total)):
            raise InvalidJobError(
                f"set_progress() takes finite numbers, not current={current!r}, total={total!r}."
            )
        if total is not None and total <= 0:
            raise InvalidJobError(f"set_progress(total=...) must be positive, not {total!r}.")
        if not isinstance(message, str):
            raise InvalidJobError(f"set_progress(message=...) takes a str, not {message!r}.")
        message = "".join(ch if ch.isprintable() else " " for ch in message[:MESSAGE_MAX_LENGTH])
        progress: Progress = {
            "current": current,
            "total": total,
            "message": message,
            "updated_at": timezone.now().isoformat(),
        }
        self.progress = progress
        if self._report is not None:
            self._report(progress)

    def __repr__(self) -> str:
        return (
            f"<JobContext {self._job_id!r} attempt {self._attempt}/{self._max_attempts} "
            f"on {self._worker}>"
        )


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


class Locale:
    """A ``JOBQUEUE["CONTEXT"]`` class: the caller's active language
    (``translation.get_language()``), active around the job's run
    (``translation.override``)."""

    @staticmethod
    def capture() -> str | None:
        return translation.get_language()

    @staticmethod
    def restore(value: Any) -> AbstractContextManager[Any]:
        return translation.override(value if isinstance(value, str) else None)


class TraceContext:
    """A ``JOBQUEUE["CONTEXT"]`` class: the OpenTelemetry trace context (W3C
    ``traceparent``/``tracestate``), so the run's CONSUMER span is a child of the enqueue's
    PRODUCER span. Nothing without ``opentelemetry-api`` or with ``JOBQUEUE["TRACING"] =
    False``.

    ``at_write``: captured when the jobs are written, inside the enqueue span (which does
    not exist yet when the call is validated), once per write."""

    at_write = True

    @staticmethod
    def capture() -> dict[str, str] | None:
        return telemetry.current_carrier()

    @staticmethod
    def restore(value: Any) -> AbstractContextManager[Any]:
        return telemetry.continuing(value)
