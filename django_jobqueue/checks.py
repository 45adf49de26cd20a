"""System checks (``manage.py check``). Each id has a line in docs/reference/checks.md."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS

_NUMBERS: dict[str, tuple[Any, float]] = {
    "MAX_ATTEMPTS": (int, 1),
    "RESULT_TTL": (int, 0),
    "WAIT_TIMEOUT": ((int, float), 0),
    "LEASE_SECONDS": ((int, float), 1),
    "POLL_INTERVAL": ((int, float), 0.001),
    "RETRY_BACKOFF": ((int, float), 0),
    "RETRY_BACKOFF_MAX": ((int, float), 0),
    "NOTIFY_TIMEOUT": ((int, float), 0.001),
    "PREFETCH": (int, 0),
}


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E001: JOBQUEUE is malformed (not a dict, an unknown key, a value of the wrong kind)."""
    user = getattr(settings, "JOBQUEUE", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [
            Error(
                "The JOBQUEUE setting must be a dict.",
                hint="JOBQUEUE = {'DEFAULT_QUEUE': 'default', ...}; every key is optional.",
                id="django_jobqueue.E001",
            )
        ]
    errors = []
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            Error(
                f"Unknown key {key!r} in the JOBQUEUE setting.",
                hint="Valid keys: " + ", ".join(sorted(DEFAULTS)) + ".",
                id="django_jobqueue.E001",
            )
        )
    for key, (kind, minimum) in _NUMBERS.items():
        if key not in user:
            continue
        value = user[key]
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            errors.append(
                Error(
                    f"JOBQUEUE[{key!r}] is {value!r}; it must be a number of at least {minimum}.",
                    hint=f"The default is {DEFAULTS[key]!r}.",
                    id="django_jobqueue.E001",
                )
            )
    heartbeat = user.get("HEARTBEAT_INTERVAL")
    if heartbeat is not None and (
        isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or heartbeat <= 0
    ):
        errors.append(
            Error(
                f"JOBQUEUE['HEARTBEAT_INTERVAL'] is {heartbeat!r}; it must be a positive number "
                "of seconds, or None for a third of LEASE_SECONDS.",
                id="django_jobqueue.E001",
            )
        )
    for flag in ("WORKER_SYNCHRONOUS_COMMIT", "EAGER"):
        if not isinstance(user.get(flag, False), bool):
            errors.append(
                Error(f"JOBQUEUE[{flag!r}] must be True or False.", id="django_jobqueue.E001")
            )
    queue = user.get("DEFAULT_QUEUE", DEFAULTS["DEFAULT_QUEUE"])
    from .options import check_queue

    try:
        check_queue(queue)
    except ValueError as exc:
        errors.append(Error(f"JOBQUEUE['DEFAULT_QUEUE']: {exc}", id="django_jobqueue.E001"))
    return errors


@register(Tags.compatibility)
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E002: the named channel layer does not exist. W001: it cannot cross processes."""
    user = getattr(settings, "JOBQUEUE", None) or {}
    alias = user.get("CHANNEL_LAYER", DEFAULTS["CHANNEL_LAYER"]) if isinstance(user, dict) else None
    if alias is None:
        return []
    layers = getattr(settings, "CHANNEL_LAYERS", {}) or {}
    if alias not in layers:
        if alias == DEFAULTS["CHANNEL_LAYER"] and "CHANNEL_LAYER" not in user:
            return []  # nothing configured at all: polling only, the embedded default
        return [
            Error(
                f"JOBQUEUE['CHANNEL_LAYER'] names {alias!r}, which is not in CHANNEL_LAYERS.",
                hint="Add it to CHANNEL_LAYERS, or set JOBQUEUE['CHANNEL_LAYER'] = None to "
                "poll the database only.",
                id="django_jobqueue.E002",
            )
        ]
    backend = str(layers[alias].get("BACKEND", ""))
    if backend.startswith("channels_redis.core.") and _redis_py_major() >= 8:
        hosts = (layers[alias].get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
        if not all(_blocking_reads_fit(host) for host in hosts):
            return [
                Warning(
                    f"Channel layer {alias!r} uses redis-py 8, whose default socket_timeout "
                    "(5 s) is as long as channels_redis's blocking receive (5 s): receives "
                    "time out every few seconds.",
                    hint="Give each host a longer socket timeout, e.g. CONFIG = {'hosts': "
                    "[{'address': 'redis://127.0.0.1:6379/0', 'socket_timeout': 10}]}.",
                    id="django_jobqueue.W002",
                )
            ]
    if backend.endswith("InMemoryChannelLayer"):
        return [
            Warning(
                f"JOBQUEUE uses the in-memory channel layer {alias!r}, which only reaches its "
                "own process: a runjobworker process cannot notify web processes, so waiters "
                "fall back to polling every POLL_INTERVAL.",
                hint="Use channels_redis (RedisChannelLayer) in production, or set "
                "JOBQUEUE['CHANNEL_LAYER'] = None to say polling is intended.",
                id="django_jobqueue.W001",
            )
        ]
    return []


def _redis_py_major() -> int:
    try:
        from importlib.metadata import version

        return int(version("redis").split(".")[0])
    except Exception:
        return 0


def _blocking_reads_fit(host: Any) -> bool:
    """True if the host's socket timeout outlasts channels_redis's 5 s BZPOPMIN."""
    if not isinstance(host, dict) or "socket_timeout" not in host:
        return False
    timeout = host["socket_timeout"]
    return timeout is None or (isinstance(timeout, int | float) and timeout > 5)
