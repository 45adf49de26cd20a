"""When a worker should hand over to a fresh process: ``--max-jobs`` and ``--max-memory``.

Celery's ``worker_max_tasks_per_child`` and ``worker_max_memory_per_child``: a process that
leaks (a C extension, a cache that only grows) is replaced before it hurts. The worker asks
:meth:`Recycling.reason` after each batch of outcomes it writes; a reason makes it drain (stop
claiming, finish its running jobs) and exit 0, for its supervisor to start a fresh process.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from collections.abc import Callable

logger = logging.getLogger("django_jobqueue.worker")

#: Bytes in the MB of ``--max-memory`` (a mebibyte, as ``ps`` and ``top`` count).
MB = 2**20


def rss_bytes() -> int:
    """This process's resident set size now, in bytes (Linux: ``/proc/self/statm``);
    elsewhere its peak so far (``getrusage``), which only errs towards recycling early."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, else KiB


class Recycling:
    """The limits of one worker process: ``max_jobs`` outcomes written, ``max_memory`` MB of
    resident memory (None: no limit)."""

    def __init__(self, max_jobs: int | None = None, max_memory: int | None = None) -> None:
        self.max_jobs = max_jobs
        self.max_memory = max_memory
        self.due = False

    def reason(self, processed: int) -> str | None:
        """Why the process should be replaced now that it has written ``processed``
        outcomes, in words for the log, or None."""
        if self.max_jobs is not None and processed >= self.max_jobs:
            return f"it finished {processed} jobs (--max-jobs {self.max_jobs})"
        if self.max_memory is not None:
            rss = rss_bytes()
            if rss > self.max_memory * MB:
                return f"its resident memory is {rss / MB:.0f} MB (--max-memory {self.max_memory})"
        return None

    def check(self, name: str, processed: int, stop: Callable[[], None]) -> None:
        """After worker ``name`` wrote outcomes (``processed`` so far): past a limit, log why
        and ``stop()`` it (once): it drains and exits 0."""
        if self.due or (self.max_jobs is None and self.max_memory is None):
            return
        reason = self.reason(processed)
        if reason is None:
            return
        self.due = True
        logger.info(
            "worker name=%s recycling: %s; finishing its running jobs, then exiting (status 0) "
            "for a fresh process to take over",
            name,
            reason,
        )
        stop()
