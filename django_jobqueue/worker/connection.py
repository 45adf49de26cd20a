"""The worker's own database connection: prepared once per connection, backed off when lost."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import connections

from .. import conf
from ..models import Job

logger = logging.getLogger("django_jobqueue.worker")


class Connection:
    """The main thread's connection to ``using``, where the worker does every queue write.

    ``sleep(seconds)`` waits (and returns early when the worker is woken) between attempts
    to reconnect.
    """

    def __init__(self, using: str, name: str, sleep: Callable[[float], None]) -> None:
        self.using = using
        self.name = name
        self.sleep = sleep
        self.failures = 0
        self._prepared: object = None

    def prepare(self) -> None:
        """Once per database connection of the worker's main thread (PostgreSQL):

        * ``synchronous_commit = off`` unless ``WORKER_SYNCHRONOUS_COMMIT``: the worker's own
          writes (claims, completions, leases) skip the wait for the disk. A database crash
          can forget the last fraction of a second of them, which at-least-once absorbs: a
          forgotten claim or completion runs the job again. Enqueues stay durable. Not behind
          a transaction pooler (:func:`.conf.behind_transaction_pooler`): the setting lives in
          the server session, which the pooler would hand to other clients (their enqueues
          would stop being durable); there, set it on the worker's own role instead.
        * ``ANALYZE`` of a job table that was never analyzed (a fresh install, before
          autovacuum's first pass), whose plans would sort every queued job per claim.
        """
        connection = connections[self.using]
        if connection.vendor != "postgresql" or connection.in_atomic_block:
            return
        connection.ensure_connection()
        raw = connection.connection
        if raw is self._prepared:
            return
        table = Job._meta.db_table
        with connection.cursor() as cursor:
            pooled = conf.behind_transaction_pooler(connection.settings_dict)
            if not conf.settings.WORKER_SYNCHRONOUS_COMMIT and not pooled:
                cursor.execute("SET synchronous_commit TO off")
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table])
            row = cursor.fetchone()
            if row is not None and row[0] < 0:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")
        self._prepared = raw

    def backoff(self) -> float:
        """Seconds to wait after the current run of failures: 0.2s doubling, at most 5s."""
        return min(5.0, 0.1 * 2.0 ** min(self.failures, 6))

    def healthy(self) -> None:
        """A pass of the loop went through: the next failure starts the backoff again."""
        self.failures = 0

    def lost(self, exc: BaseException) -> None:
        """The database went away: close every connection of this thread, wait, go on."""
        self.failures += 1
        delay = self.backoff()
        logger.warning(
            "database error in worker name=%s (%s); reconnecting in %.1fs", self.name, exc, delay
        )
        for connection in connections.all(initialized_only=True):
            connection.close()
        self.sleep(delay)

    def failed(self) -> None:
        """An unexpected error (not a lost connection): wait as for one, then go on."""
        self.sleep(self.backoff())
        self.failures += 1

    def close(self) -> None:
        connection = connections[self.using]
        if not connection.in_atomic_block:  # a test may run the worker inside its transaction
            connection.close()
