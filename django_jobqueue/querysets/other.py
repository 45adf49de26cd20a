"""The QuerySets of the app's other tables: dead letters, schedules, worker heartbeats."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import models


class DeadLetterQuerySet(models.QuerySet[Any]):
    """Dead letters; requeueing lives in :mod:`django_jobqueue.deadletters`."""

    def prune(self, now: datetime, *, ttl: float | None, keep: int | None, limit: int) -> int:
        """Delete at most ``limit`` dead letters, oldest first: those that failed ``ttl``
        seconds or more before ``now``, then those beyond the newest ``keep`` (None: no
        such bound); return how many. Callers repeat it while it returns ``limit``.

        Read through the ``failed_at`` index: the ``keep`` bound steps over the newest
        ``keep`` entries of it to find the newest dead letter beyond it. A dead letter is
        only a record: deleting it never touches a job (a requeued job's dead letter is
        gone already).
        """
        chosen = list(self.expired(now, ttl=ttl, keep=keep).values_list("pk", flat=True)[:limit])
        if not chosen:
            return 0
        deleted, _ = self.filter(pk__in=chosen).order_by().delete()
        return deleted

    def expired(self, now: datetime, *, ttl: float | None, keep: int | None) -> Any:
        """The dead letters :meth:`prune` deletes, oldest first (one query for ``keep``)."""
        doomed = models.Q(pk__in=[])
        if ttl is not None:
            doomed |= models.Q(failed_at__lte=now - timedelta(seconds=ttl))
        if keep is not None:
            newest = self.order_by("-failed_at", "-id").values_list("failed_at", "id")
            boundary = list(newest[keep : keep + 1])
            if boundary:
                at, pk = boundary[0]
                doomed |= models.Q(failed_at__lt=at) | models.Q(failed_at=at, id__lte=pk)
        return self.filter(doomed).order_by("failed_at", "id")


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
