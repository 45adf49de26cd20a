"""The ``JOBQUEUE`` setting, merged over defaults lazily and re-read when a test overrides it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

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
    # The worker's controls (docs/guide/controls.md).
    "TIME_LIMIT": None,  # seconds an attempt may run; None: no limit
    "LIMITS": {},  # key -> {"concurrency": N, "rate": "N/s|m|h"}
    "LIMITS_CACHE": None,  # a django-redis cache alias that holds the limits; None: the database
    "PROGRESS_INTERVAL": 0.5,  # seconds between two progress writes of one job
    # Tests (docs/guide/testing.md): enqueue runs the job inline once the transaction commits.
    "EAGER": False,
}

_cache: dict[str, Any] | None = None


def get_settings() -> dict[str, Any]:
    """Return ``JOBQUEUE`` merged over :data:`DEFAULTS` (cached until the setting changes)."""
    global _cache
    if _cache is None:
        user = getattr(settings, "JOBQUEUE", None) or {}
        merged = dict(DEFAULTS)
        if isinstance(user, dict):
            merged.update(user)
        _cache = merged
    return _cache


def get(name: str) -> Any:
    return get_settings()[name]


def heartbeat_interval() -> float:
    value = get("HEARTBEAT_INTERVAL")
    return float(value) if value else float(get("LEASE_SECONDS")) / 3


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cache
    if setting in ("JOBQUEUE", "CHANNEL_LAYERS", "DATABASES"):
        _cache = None
