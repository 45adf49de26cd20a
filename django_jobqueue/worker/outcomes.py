"""The outcome of one attempt, as the runner reports it and the writer records it."""

from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .. import conf
from ..base import ClaimedJob, Ending
from ..exceptions import TimeLimitExceeded
from ..serialization import clean_text, result_size


@dataclass(slots=True, eq=False)
class Outcome:
    """How the attempt ``job`` (its lease's run) ended: a result, or an error and traceback.

    ``retry``: a failure that may run again (False: dead-letter at once, ``retry_on``);
    ``retry_after``: seconds before that (``Retry(after=...)``; None: :func:`backoff`);
    ``cancelled``: someone asked the run to stop before it ended; ``progress``: its last
    progress not written yet.
    """

    job: ClaimedJob
    ok: bool
    duration: float
    result: Any = None
    error: str = ""
    traceback: str = ""
    retry: bool = True
    retry_after: float | None = None
    cancelled: bool = False
    progress: dict[str, Any] | None = None
    #: The result's size as JSON, bytes (about): writes are split to stay far from limits.
    size: int = 0
    #: The raised exception's class as ``module.QualName`` (a task's ``TaskError``).
    exception_path: str = ""
    #: Its completion was committed with the job's own writes (``@job(atomic=True)``, or the
    #: short-job path): the writer only logs it and notifies (``notify``: someone waits).
    committed: bool = False
    notify: bool = False
    #: How the attempt ended, once recorded (:func:`.endings.log`); ``job_finished`` sends it.
    ending: Ending | None = None


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, with jitter."""
    base = conf.settings.RETRY_BACKOFF
    ceiling = conf.settings.RETRY_BACKOFF_MAX
    delay = min(ceiling, base * 2.0 ** min(attempt - 1, 60))  # 2**1024 would overflow
    return delay / 2 + random.uniform(0, delay / 2)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` (or just the type's name) for logs and the job's error."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failed(job: ClaimedJob, started: float, error: str) -> Outcome:
    """The outcome of an attempt that raised; call it from the ``except`` block."""
    trace = traceback.format_exc()
    raised = sys.exc_info()[0]
    return Outcome(
        job,
        False,
        time.monotonic() - started,
        # Storable whatever the exception said: no NUL, no lone surrogate, MAX_ERROR_BYTES.
        error=clean_text(error),
        traceback=clean_text(trace),
        exception_path=f"{raised.__module__}.{raised.__qualname__}" if raised else "",
    )


def succeeded(job: ClaimedJob, result: Any, started: float) -> Outcome:
    """The outcome of an attempt that returned ``result``; a failure if it cannot be stored."""
    try:
        size = result_size(result)
    except Exception as exc:
        return failed(job, started, f"The job returned a value that cannot be stored: {exc}")
    return Outcome(job, True, time.monotonic() - started, result=result, size=size)


def timed_out(job: ClaimedJob, duration: float, trace: str) -> Outcome:
    """The outcome of an attempt that ran ``duration`` seconds, past its ``time_limit``
    (``trace``: where it was then, if known)."""
    error = describe(TimeLimitExceeded(job.time_limit))
    return Outcome(job, False, duration, error=error, traceback=trace)
