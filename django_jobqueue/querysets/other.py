"""The QuerySets of the app's other tables: dead letters, schedules, worker heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models


class DeadLetterQuerySet(models.QuerySet[Any]):
    """Dead letters; requeueing lives in :mod:`django_jobqueue.deadletters`."""


class ScheduleQuerySet(models.QuerySet[Any]):
    """Schedule states; enqueueing ticks lives in :mod:`django_jobqueue.periodic`."""

    def claim_tick(self, name: str, tick: datetime, job_id: str, now: datetime) -> bool:
        """Record ``tick`` as the schedule's last, if it is newer than the last one, falls
        after the moment the schedule started counting and the schedule is not paused.

        True for exactly one caller per tick, however many race (the row is the guard: on
        PostgreSQL the second UPDATE waits for the first and then finds the condition false).
        """
        claimed: int = (
            self.filter(name=name, paused=False, since__lt=tick)
            .filter(models.Q(last_tick__isnull=True) | models.Q(last_tick__lt=tick))
            .update(last_tick=tick, last_job_id=job_id, last_enqueued_at=now)
        )
        return claimed == 1


class WorkerHeartbeatQuerySet(models.QuerySet[Any]):
    """Live workers' heartbeat rows: one per worker, refreshed on its heartbeat timer."""

    def seen_since(self, moment: datetime) -> models.QuerySet[Any]:
        """Rows refreshed at or after ``moment``: workers taken to be alive."""
        return self.filter(last_seen__gte=moment)
