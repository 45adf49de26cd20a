"""The notifications' logger, and what they log about input they ignore."""

from __future__ import annotations

import logging
import reprlib
import threading
import time

logger = logging.getLogger("django_jobqueue.notifications")

#: At most one record per kind of ignored input in this many seconds.
IGNORED_LOG_INTERVAL = 10.0
PREVIEW_CHARS = 120

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 6
_repr.maxstring = _repr.maxother = 60


def preview(value: object) -> str:
    """A short, truncated repr of ``value``: safe to log, whatever its size or content."""
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that fails must not make logging fail
        text = f"<{type(value).__name__} that cannot be represented>"
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


class RateLimitedLog:
    """Warnings about ignored input, at most one per kind every ``interval`` seconds (a flood
    of forged messages must not flood the log); the next record says how many were not
    logged in between."""

    def __init__(self, interval: float = IGNORED_LOG_INTERVAL) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._skipped[kind] = self._skipped.get(kind, 0) + 1
                return
            self._next[kind] = now + self.interval
            skipped = self._skipped.pop(kind, 0)
        if skipped:
            msg += " (and %d more not logged in the last %gs)"
            args = (*args, skipped, self.interval)
        logger.warning(msg, *args)
