"""The outcome of one attempt, as the runner reports it and the writer records it."""

from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .. import conf
from ..base import ClaimedJob
from ..serialization import check_json


@dataclass(slots=True, eq=False)
class Outcome:
    """How the attempt ``job`` (its lease's run) ended: a result, or an error and traceback."""

    job: ClaimedJob
    ok: bool
    duration: float
    result: Any = None
    error: str = ""
    traceback: str = ""
    #: The raised exception's class as ``module.QualName`` (a task's ``TaskError``).
    exception_path: str = ""


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, with jitter."""
    base = float(conf.get("RETRY_BACKOFF"))
    ceiling = float(conf.get("RETRY_BACKOFF_MAX"))
    delay = min(ceiling, base * 2 ** (attempt - 1))
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
        error=error.replace("\x00", "\\x00"),  # text columns cannot hold NUL
        traceback=trace.replace("\x00", "\\x00"),
        exception_path=f"{raised.__module__}.{raised.__qualname__}" if raised else "",
    )


def succeeded(job: ClaimedJob, result: Any, started: float) -> Outcome:
    """The outcome of an attempt that returned ``result``; a failure if it cannot be stored."""
    try:
        check_json(result, "result")
    except Exception as exc:
        return failed(job, started, f"The job returned a value that cannot be stored: {exc}")
    return Outcome(job, True, time.monotonic() - started, result=result)
