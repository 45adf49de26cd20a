"""The worker's heartbeat row (:class:`~django_jobqueue.models.WorkerHeartbeat`): written on
the heartbeat timer, deleted on a clean exit; rows of workers that died age out.

A row not refreshed for ``LEASE_SECONDS`` is deleted by any live worker's heartbeat: by then
the dead worker's jobs are being reaped too. A live worker whose row was deleted (it could
not reach the database for that long) writes it again on its next heartbeat.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, models

from .. import clock, conf
from ..models import WorkerHeartbeat

logger = logging.getLogger("django_jobqueue.worker")


class Presence:
    """``beat()`` on the heartbeat timer, ``leave()`` on exit. ``counts()`` gives the jobs
    running and the jobs done so far."""

    def __init__(
        self,
        using: str,
        name: str,
        *,
        queues: list[str] | None,
        concurrency: int,
        scheduling: bool,
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.using = using
        self.name = name
        self.counts = counts
        self.row = WorkerHeartbeat(
            name=name[:200],
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            queues=queues,
            concurrency=concurrency,
            scheduling=scheduling,
            started_at=clock.now(),
        )
        self.written = False

    def beat(self) -> None:
        """Refresh this worker's row (write it on the first beat), then delete the rows of
        workers not seen for ``LEASE_SECONDS``."""
        now = clock.now()
        running, done = self.counts()
        rows = WorkerHeartbeat.objects.using(self.using)
        fields = {"last_seen": now, "jobs_running": running, "jobs_done": done}
        if self.written and rows.filter(name=self.row.name).update(**fields):
            self._delete("last_seen <", now - timedelta(seconds=conf.settings.LEASE_SECONDS))
            return
        for key, value in fields.items():
            setattr(self.row, key, value)
        try:  # one INSERT (no transaction around it, as bulk_create would add)
            self.row.save(using=self.using, force_insert=True)
        except IntegrityError:  # a row of the same name: this worker, restarted with --name
            self.row.save(using=self.using, force_update=True)
        self.written = True

    def _delete(self, condition: str, value: Any) -> int:
        """``DELETE ... WHERE <column> <op> %s``: one statement (``QuerySet.delete()`` would
        wrap it in a transaction of its own)."""
        connection = connections[self.using]
        column = condition.split()[0]
        field = WorkerHeartbeat._meta.get_field(column)
        assert isinstance(field, models.Field)
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {connection.ops.quote_name(WorkerHeartbeat._meta.db_table)} "  # noqa: S608
                f"WHERE {connection.ops.quote_name(column)} {condition.split()[1]} %s",
                [field.get_db_prep_value(value, connection)],
            )
            return int(cursor.rowcount)

    def leave(self) -> None:
        """Delete this worker's row (a clean exit); a database error is only logged."""
        if not self.written:
            return
        try:
            self._delete("name =", self.row.name)
        except DatabaseError as exc:
            logger.warning("worker name=%s: could not delete its heartbeat row: %s", self.name, exc)
