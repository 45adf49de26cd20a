"""``@job(atomic=True)``: an attempt whose writes and completion commit together, or not at all.

The job runs inside ``transaction.atomic`` on the job's database (the worker's ``using``).
Before that transaction commits, the completion is written in it by the writer's own
completion statement (:func:`.endings.complete`, the one every completion goes through; here
the job's transaction is the one it runs in): an ``UPDATE`` of the job row conditioned on the
attempt (``status = running AND (id, attempts) = fence``), which locks
the row and checks the fence under that lock. So:

* a worker killed mid-job never commits: the database rolls the job's writes back, the claim
  (committed earlier, on the worker's own connection) runs out its lease, the job runs again;
* a run that lost its lease (another worker took the job over: ``attempts`` moved on, or the
  row left ``running``) matches no row, and its writes are rolled back instead of committed;
* a run someone asked to stop ends ``cancelled`` with its writes rolled back;
* a failed attempt (or a result that cannot be stored) rolls its writes back; the failure is
  then recorded by the worker's writer in a transaction of its own, as for any job.

A taken-over row waits for the lock: the other worker's claim cannot pick a row this
transaction holds (``SKIP LOCKED``), and the reaper's fenced update waits, then sees it done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import transaction

from .. import clock
from ..base import ClaimedJob, Ending
from .endings import complete
from .outcomes import Outcome, succeeded


class _RollBack(Exception):
    """Leave the atomic block without committing; carries the attempt's outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__()
        self.outcome = outcome


class LeaseLost(Exception):
    """The attempt's row is no longer this run's: its writes were rolled back."""


def run_atomic(using: str, job: ClaimedJob, call: Callable[[], Any]) -> Outcome:
    """Run ``call`` (the job) and commit its completion in one transaction on ``using``.

    Returns the outcome: ``committed`` when it completed here; a failure (the job raised,
    its result cannot be stored, or the lease was lost) or a cancel after a rollback, for the
    writer to record. The job's own exception propagates (rolled back) to the caller.
    """
    started = time.monotonic()
    try:
        with transaction.atomic(using=using):
            outcome = succeeded(job, call(), started)
            if not outcome.ok:
                raise _RollBack(outcome)
            # The writer's own completion statement, in the job's transaction: the fence is
            # checked on the row it locks, just before the job's writes commit.
            ((ending, notify),) = complete(using, [outcome], clock.now())
            if ending is Ending.DISCARDED:
                raise LeaseLost(
                    f"job {job.job_id} attempt {job.attempts} lost its lease before it "
                    "committed: its writes were rolled back"
                )
            if outcome.cancelled:
                raise _RollBack(outcome)
            outcome.committed, outcome.notify = True, notify
    except _RollBack as rolled_back:
        return rolled_back.outcome
    outcome.duration = time.monotonic() - started
    return outcome
