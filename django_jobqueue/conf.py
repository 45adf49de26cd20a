"""The ``JOBQUEUE`` setting, merged over defaults lazily and re-read when a test overrides it.

``manage.py check`` reports a value that cannot work (see checks.py, which shares
:data:`BOUNDS`); here such a value is replaced by its default, with one warning in the log,
so that a process started without checks does not crash or spin on it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

logger = logging.getLogger("django_jobqueue")

DEFAULTS: dict[str, Any] = {
    "DEFAULT_QUEUE": "default",
    "MAX_ATTEMPTS": 3,
    "RESULT_TTL": 3600,
    "WAIT_TIMEOUT": 30,
    "CHANNEL_LAYER": "default",
    "LEASE_SECONDS": 30,
    "POLL_INTERVAL": 1.0,
    # Beyond the contract: each has a docs line in docs/reference/settings.md.
    "HEARTBEAT_INTERVAL": None,  # None: a third of LEASE_SECONDS
    "RETRY_BACKOFF": 1.0,  # seconds before the first retry; doubles per attempt
    "RETRY_BACKOFF_MAX": 600.0,
    "NOTIFY_TIMEOUT": 0.5,  # bound on every channel-layer call, seconds
    "PREFETCH": 32,  # jobs a busy worker claims ahead of its free slots
    "WORKER_SYNCHRONOUS_COMMIT": False,  # PostgreSQL: wait for the disk on worker writes
    # PostgreSQL: names whose runs average at most this many seconds are claimed, run and
    # completed in one transaction (worker/shortpath.py); 0 turns that off.
    "SHORT_JOB_SECONDS": 0.002,
    # The worker's controls (docs/guide/controls.md).
    "TIME_LIMIT": None,  # seconds an attempt may run; None: no limit
    "LIMITS": {},  # key -> {"concurrency": N, "rate": "N/s|m|h"}
    "LIMITS_CACHE": None,  # a django-redis cache alias that holds the limits; None: the database
    "PROGRESS_INTERVAL": 0.5,  # seconds between two progress writes of one job
    # Periodic jobs (docs/guide/schedules.md): name -> {"job", "cron", "args", "kwargs", "queue"}.
    "SCHEDULE": {},
    # Operations (docs/guide/operations.md).
    "PRUNE_INTERVAL": 10.0,  # seconds between a worker's prunes while nothing is left to prune
    "PRUNE_BATCH": 1000,  # finished jobs deleted per statement (one short transaction)
    "METRICS": True,  # record Prometheus metrics when prometheus-client is installed
    "TRACING": True,  # OpenTelemetry spans when opentelemetry-api is installed
    "MAX_WATCHERS": 10_000,  # WebSocket watchers one process serves; more: closed with 4503
    "MAX_WATCHERS_PER_TOKEN": 8,  # sockets one watch token may hold; more: closed with 4429
    "MAX_WATCHERS_PER_CLIENT": 1_000,  # sockets one client address may hold; more: 4429
    "WATCHER_SEND_TIMEOUT": 10.0,  # seconds a socket may take to take one state; then closed
    # Limits on hostile or accidental input (docs/guide/limits.md).
    "MAX_DEPTH": 64,  # nesting of lists and dicts within one argument or result
    "MAX_ARGS_BYTES": 1_048_576,  # a job's arguments, as JSON (UTF-8 bytes)
    "MAX_RESULT_BYTES": 1_048_576,  # a job's result, as JSON
    "MAX_ERROR_BYTES": 65_536,  # a stored error message or traceback; longer ones are cut
    # Tests (docs/guide/testing.md): enqueue runs the job inline once the transaction commits.
    "EAGER": False,
}

INT32 = 2**31 - 1
DAY = 86_400.0

#: Number settings: (integers only?, minimum, maximum), both bounds included. The checks
#: report values outside them (E001 below the minimum, E011 above the maximum).
BOUNDS: dict[str, tuple[bool, float, float]] = {
    "MAX_ATTEMPTS": (True, 1, INT32),  # an integer column
    "RESULT_TTL": (True, 0, 366 * DAY),  # a year
    "WAIT_TIMEOUT": (False, 0, DAY),
    "LEASE_SECONDS": (False, 1, DAY),
    "POLL_INTERVAL": (False, 0.001, 3600),
    "RETRY_BACKOFF": (False, 0, DAY),
    "RETRY_BACKOFF_MAX": (False, 0, 7 * DAY),
    "NOTIFY_TIMEOUT": (False, 0.001, 60),
    "PREFETCH": (True, 0, 10_000),
    "SHORT_JOB_SECONDS": (False, 0, 0.05),  # a window lasts at most 5 times this
    "MAX_DEPTH": (True, 1, 200),  # far below Python's recursion limit (1,000)
    "MAX_ARGS_BYTES": (True, 1024, 128 * 2**20),  # PostgreSQL's jsonb holds at most 255 MB
    "MAX_RESULT_BYTES": (True, 1024, 128 * 2**20),
    "MAX_ERROR_BYTES": (True, 1024, 16 * 2**20),
    "PROGRESS_INTERVAL": (False, 0.01, 3600),
    "PRUNE_INTERVAL": (False, 0.01, DAY),
    "PRUNE_BATCH": (True, 1, 100_000),
    "MAX_WATCHERS": (True, 0, 1_000_000),
    "MAX_WATCHERS_PER_TOKEN": (True, 1, 1_000_000),
    "MAX_WATCHERS_PER_CLIENT": (True, 1, 1_000_000),
    "WATCHER_SEND_TIMEOUT": (False, 0.1, 3600),
}
#: HEARTBEAT_INTERVAL (None, or a number of seconds) is bounded by LEASE_SECONDS instead.
HEARTBEAT_BOUNDS = (0.001, DAY)


def fault(name: str, value: Any) -> str | None:
    """Why ``value`` cannot work for the number setting ``name``, or None if it can.

    One of ``"type"``, ``"finite"``, ``"minimum"``, ``"maximum"``: the checks give each its
    own id, and :func:`get_settings` falls back to the default for any of them.
    """
    integral, minimum, maximum = BOUNDS[name]
    if isinstance(value, float) and not math.isfinite(value):
        return "finite"
    kinds = (int,) if integral else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return "type"
    if value < minimum:
        return "minimum"
    if value > maximum:
        return "maximum"
    return None


def heartbeat_fault(value: Any) -> str | None:
    """Like :func:`fault`, for HEARTBEAT_INTERVAL alone (None is valid)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "type"
    if not math.isfinite(value):
        return "finite"
    if value < HEARTBEAT_BOUNDS[0]:
        return "minimum"
    if value > HEARTBEAT_BOUNDS[1]:
        return "maximum"
    return None


_cache: dict[str, Any] | None = None


def get_settings() -> dict[str, Any]:
    """Return ``JOBQUEUE`` merged over :data:`DEFAULTS` (cached until the setting changes).

    A number setting that cannot work (wrong type, NaN, infinite, out of its bounds) is
    replaced by its default, with a warning: ``manage.py check`` reports it as an error.
    """
    global _cache
    if _cache is None:
        user = getattr(settings, "JOBQUEUE", None) or {}
        merged = dict(DEFAULTS)
        if isinstance(user, dict):
            merged.update(user)
        for name in BOUNDS:
            if fault(name, merged[name]) is not None:
                _replaced(name, merged)
        if heartbeat_fault(merged["HEARTBEAT_INTERVAL"]) is not None:
            _replaced("HEARTBEAT_INTERVAL", merged)
        _cache = merged
    return _cache


def _replaced(name: str, merged: dict[str, Any]) -> None:
    logger.warning(
        "JOBQUEUE[%r] is %r, which cannot work; using the default %r instead "
        "(manage.py check says why)",
        name,
        merged[name],
        DEFAULTS[name],
    )
    merged[name] = DEFAULTS[name]


def get(name: str) -> Any:
    return get_settings()[name]


def heartbeat_interval() -> float:
    """Seconds between lease renewals: HEARTBEAT_INTERVAL, at most half of LEASE_SECONDS
    (a longer one lets leases expire under running jobs, which then run twice at once)."""
    lease = float(get("LEASE_SECONDS"))
    value = get("HEARTBEAT_INTERVAL")
    return min(float(value), lease / 2) if value else lease / 3


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cache
    if setting in ("JOBQUEUE", "CHANNEL_LAYERS", "DATABASES"):
        _cache = None
