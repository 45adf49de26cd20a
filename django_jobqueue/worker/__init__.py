"""The worker: claim, run, renew leases, retry with backoff, dead-letter, stop cleanly.

:class:`Worker` (in :mod:`.loop`) composes the pieces: :mod:`.shortpath` (one transaction
per batch of short jobs, PostgreSQL) and :mod:`.steps` over :mod:`.connection`,
:mod:`.claiming`, :mod:`.runner` (with :mod:`.timelimits` and :mod:`.atomic`, the
``@job(atomic=True)`` transaction), :mod:`.writer` (with :mod:`.endings`), :mod:`.upkeep`
and :mod:`.shutdown`, over :mod:`.outcomes`.
"""

from __future__ import annotations

from .claiming import PREFETCH_SECONDS, default_concurrency
from .loop import Worker
from .outcomes import Outcome, backoff, describe
from .timelimits import EXIT_ABANDONED_THREADS
from .upkeep import PRUNE_SHARE, REAP_BATCH

__all__ = [
    "EXIT_ABANDONED_THREADS",
    "PREFETCH_SECONDS",
    "PRUNE_SHARE",
    "REAP_BATCH",
    "Outcome",
    "Worker",
    "backoff",
    "default_concurrency",
    "describe",
]
