"""Query verbs for jobs: the hot path of producers and workers.

Claiming, completing and renewing leases are single SQL statements (``UPDATE ...
RETURNING``) written here by hand: each costs one round trip and, outside a caller's
transaction, one commit. Every write by a worker is fenced on ``(id, attempts)``, so a worker
whose lease was taken over cannot overwrite the newer run's outcome.

``JobQuerySet`` is composed of one mixin per concern; a new verb goes to the module of its
concern (floors top to bottom, each importing only below it; ``lint-imports`` checks it):

* :mod:`.jobs`: ``JobQuerySet``, the composition, and nothing else;
* :mod:`.limited`: claiming under a limit per key (builds on :mod:`.claiming`);
* :mod:`.reading` (ready, state, snapshot, next retry), :mod:`.producing` (insert,
  dedup, subscribe), :mod:`.claiming` (claim, claim one job, overtaking), :mod:`.leases`
  (renew, progress, release), :mod:`.outcomes` (complete, retry, cancel, dead letter),
  :mod:`.upkeep` (prune), :mod:`.other` (the other tables' QuerySets): independent of
  each other;
* :mod:`.sql`: the shared SQL helpers and ``SQLQuerySet``, the mixins' base.

Every name this module had as ``querysets.py`` is still importable from here.
"""

from __future__ import annotations

from .cancelling import Cancelled, CancellingQuerySet
from .claiming import ClaimingQuerySet
from .jobs import JobQuerySet
from .leases import LeasesQuerySet, Renewed
from .limited import LOCK_SPACE, LimitedQuerySet
from .other import DeadLetterQuerySet, ScheduleQuerySet, WorkerHeartbeatQuerySet
from .outcomes import Completed, OutcomesQuerySet
from .producing import INSERT_BATCH, JSON_BATCH_CHARS, ProducingQuerySet, Subscribed
from .reading import ReadingQuerySet
from .sql import (
    _DONE_STATUS,
    CANCELLED_ERROR,
    DEFAULT_EXCEPTION_PATH,
    AppendAttempt,
    SQLQuerySet,
)
from .upkeep import PRUNE_BATCH, UpkeepQuerySet

__all__ = [
    "CANCELLED_ERROR",
    "DEFAULT_EXCEPTION_PATH",
    "INSERT_BATCH",
    "JSON_BATCH_CHARS",
    "LOCK_SPACE",
    "PRUNE_BATCH",
    "_DONE_STATUS",
    "AppendAttempt",
    "Cancelled",
    "CancellingQuerySet",
    "ClaimingQuerySet",
    "Completed",
    "DeadLetterQuerySet",
    "JobQuerySet",
    "LeasesQuerySet",
    "LimitedQuerySet",
    "OutcomesQuerySet",
    "ProducingQuerySet",
    "ReadingQuerySet",
    "Renewed",
    "SQLQuerySet",
    "ScheduleQuerySet",
    "Subscribed",
    "UpkeepQuerySet",
    "WorkerHeartbeatQuerySet",
]
