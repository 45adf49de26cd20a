"""The database's clock, as the worker reads it.

Leases, ``run_after``, reaping and schedule ticks compare times written by many hosts, so
they must be decided on one clock: the database's. A worker whose host clock is off (a
paused VM resumed, NTP not yet synced, a container with a faked clock) would otherwise
reap other workers' running jobs early, write leases that are already expired, run
delayed jobs early or enqueue a schedule's tick before its time.

:func:`now` is this process's clock corrected by the offset to the database's clock that
:func:`sync` last measured (one ``SELECT clock_timestamp()`` on PostgreSQL). The worker
measures it when it starts and again every :data:`RESYNC_SECONDS`. Offsets under
:data:`NEGLIGIBLE` (the round trip's noise on a healthy host) are ignored. On SQLite the
database shares the process's clock: the offset stays zero.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from django.db import connections
from django.utils import timezone

logger = logging.getLogger("django_jobqueue.clock")

#: How often a worker measures the offset again.
RESYNC_SECONDS = 60.0
#: Offsets smaller than this are noise, not skew: ignored.
NEGLIGIBLE = timedelta(milliseconds=250)
#: An offset this large is logged as a warning (the host's clock should be fixed).
WARN_AT = timedelta(seconds=2)
#: A measurement whose round trip took longer is discarded (its error is up to half the
#: round trip: a pause or a stalled network during it) and taken again a second later.
MAX_ROUND_TRIP = 0.5

_lock = threading.Lock()
_offset = timedelta(0)
_next_sync: dict[str, float] = {}


def now() -> datetime:
    """The current time on the database's clock (``timezone.now()`` plus the last
    measured offset)."""
    return timezone.now() + _offset


def offset() -> timedelta:
    """The last measured offset: database clock minus this process's clock."""
    return _offset


def _database_time(using: str) -> datetime | None:
    connection = connections[using]
    if connection.vendor == "postgresql":
        statement = "SELECT clock_timestamp()"
    elif connection.vendor == "mysql":
        statement = "SELECT UTC_TIMESTAMP(6)"
    else:
        return None  # SQLite: the database runs in this process, on its clock
    with connection.cursor() as cursor:
        cursor.execute(statement)
        value = cursor.fetchone()[0]
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _local() -> datetime:
    moment = timezone.now()
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment)


def sync(using: str = "default") -> timedelta:
    """Measure the offset to the database ``using``'s clock and use it from now on;
    return it. Database errors propagate (the worker's loop handles a lost connection)."""
    global _offset
    connections[using].ensure_connection()  # connecting is not part of the round trip
    started = time.monotonic()
    before = _local()
    database = _database_time(using)
    after = _local()
    if time.monotonic() - started > MAX_ROUND_TRIP:
        _next_sync[using] = time.monotonic() + 1.0
        return _offset
    measured = timedelta(0) if database is None else database - (before + (after - before) / 2)
    if abs(measured) < NEGLIGIBLE:
        measured = timedelta(0)
    with _lock:
        changed = abs(measured - _offset) >= NEGLIGIBLE
        _offset = measured
        _next_sync[using] = time.monotonic() + RESYNC_SECONDS
    if changed and abs(measured) >= WARN_AT:
        logger.warning(
            "this host's clock is %.1f s %s the database's: leases, delays and schedules "
            "use the database's clock; fix the host's time synchronisation (NTP)",
            abs(measured.total_seconds()),
            "behind" if measured > timedelta(0) else "ahead of",
        )
    return measured


def sync_if_due(using: str = "default") -> None:
    """:func:`sync` when the last measurement is older than :data:`RESYNC_SECONDS`."""
    if time.monotonic() >= _next_sync.get(using, 0.0):
        sync(using)
