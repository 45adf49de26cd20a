"""System checks (``manage.py check``). Each id has a line in docs/reference/checks.md."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import BOUNDS, DEFAULTS, HEARTBEAT_BOUNDS, fault, heartbeat_fault
from .limits import LimitConfigError, parse_rule, rule_for
from .periodic import inspect_schedules
from .registry import registry


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E001: JOBQUEUE is malformed (not a dict, an unknown key, a value of the wrong kind or
    below its minimum). E010: a number is NaN or infinite. E011: a number is above its
    maximum. E012: HEARTBEAT_INTERVAL is not well under LEASE_SECONDS."""
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
    for key in sorted(set(user) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(str(key), DEFAULTS, n=1) if isinstance(key, str) else []
        guess = f"Did you mean {close[0]!r}? " if close else ""
        errors.append(
            Error(
                f"Unknown key {key!r} in the JOBQUEUE setting.",
                hint=guess + "Valid keys: " + ", ".join(sorted(DEFAULTS)) + ".",
                id="django_jobqueue.E001",
            )
        )
    for key, (integral, minimum, maximum) in BOUNDS.items():
        if key in user:
            error = _number_error(key, user[key], fault(key, user[key]), integral, minimum, maximum)
            if error is not None:
                errors.append(error)
    errors.extend(_heartbeat_errors(user))
    if not isinstance(user.get("EAGER", False), bool):
        errors.append(
            Error(
                "JOBQUEUE['EAGER'] must be True or False.",
                hint="The default is False; set it True in test settings only.",
                id="django_jobqueue.E001",
            )
        )
    if not isinstance(user.get("WORKER_SYNCHRONOUS_COMMIT", False), bool):
        errors.append(
            Error(
                "JOBQUEUE['WORKER_SYNCHRONOUS_COMMIT'] must be True or False.",
                hint="The default is False.",
                id="django_jobqueue.E001",
            )
        )
    queue = user.get("DEFAULT_QUEUE", DEFAULTS["DEFAULT_QUEUE"])
    from .options import check_queue

    try:
        check_queue(queue)
    except ValueError as exc:
        errors.append(
            Error(
                f"JOBQUEUE['DEFAULT_QUEUE']: {exc}",
                hint="The default is 'default'.",
                id="django_jobqueue.E001",
            )
        )
    return errors


def _number_error(
    key: str, value: Any, problem: str | None, integral: bool, minimum: float, maximum: float
) -> Error | None:
    kind = "an int" if integral else "a number"
    default = f"The default is {DEFAULTS[key]!r}."
    if problem in ("type", "minimum"):
        return Error(
            f"JOBQUEUE[{key!r}] is {value!r}; it must be {kind} of at least {minimum:g}.",
            hint=default,
            id="django_jobqueue.E001",
        )
    if problem == "finite":
        return Error(
            f"JOBQUEUE[{key!r}] is {value!r}; it must be a finite number.",
            hint=f"NaN and infinity make the queue misbehave at run time. {default}",
            id="django_jobqueue.E010",
        )
    if problem == "maximum":
        return Error(
            f"JOBQUEUE[{key!r}] is {value!r}; it must be at most {maximum:g}.",
            hint=f"{_WHY_MAXIMUM.get(key, 'Larger values cannot work.')} {default}",
            id="django_jobqueue.E011",
        )
    return None


_WHY_MAXIMUM = {
    "MAX_ATTEMPTS": "It is stored in a 32-bit integer column: every enqueue would fail.",
    "RESULT_TTL": "A year at most: results are meant to be collected, not archived.",
    "LEASE_SECONDS": "A day at most: a killed worker's jobs wait this long to run again.",
    "MAX_DEPTH": "Deeper values come close to Python's recursion limit when read back.",
    "MAX_ARGS_BYTES": "PostgreSQL's jsonb holds at most 255 MB; keep large data elsewhere.",
    "MAX_RESULT_BYTES": "PostgreSQL's jsonb holds at most 255 MB; keep large data elsewhere.",
}


def _heartbeat_errors(user: dict[str, Any]) -> list[Error]:
    heartbeat = user.get("HEARTBEAT_INTERVAL")
    problem = heartbeat_fault(heartbeat)
    if problem in ("type", "minimum"):
        return [
            Error(
                f"JOBQUEUE['HEARTBEAT_INTERVAL'] is {heartbeat!r}; it must be a positive number "
                "of seconds, or None for a third of LEASE_SECONDS.",
                hint="The default is None.",
                id="django_jobqueue.E001",
            )
        ]
    if problem == "finite":
        return [
            Error(
                f"JOBQUEUE['HEARTBEAT_INTERVAL'] is {heartbeat!r}; it must be a finite number.",
                hint="The default is None: a third of LEASE_SECONDS.",
                id="django_jobqueue.E010",
            )
        ]
    if problem == "maximum":
        return [
            Error(
                f"JOBQUEUE['HEARTBEAT_INTERVAL'] is {heartbeat!r}; it must be at most "
                f"{HEARTBEAT_BOUNDS[1]:g}.",
                hint="The default is None: a third of LEASE_SECONDS.",
                id="django_jobqueue.E011",
            )
        ]
    lease = user.get("LEASE_SECONDS", DEFAULTS["LEASE_SECONDS"])
    if heartbeat is None or fault("LEASE_SECONDS", lease) is not None:
        return []
    if heartbeat > lease / 2:
        return [
            Error(
                f"JOBQUEUE['HEARTBEAT_INTERVAL'] is {heartbeat!r} seconds, more than half of "
                f"LEASE_SECONDS ({lease!r}): a lease can expire under a running job before it "
                "is renewed, and another worker then runs the job at the same time.",
                hint=f"Set HEARTBEAT_INTERVAL to at most {lease / 2:g} (a third of the lease, "
                "the default when it is None, leaves room for a slow renewal), or raise "
                "LEASE_SECONDS.",
                id="django_jobqueue.E012",
            )
        ]
    return []


@register(Tags.compatibility)
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E020: JOBQUEUE['SCHEDULE'] or one of its entries is malformed. E021: a cron
    expression croniter cannot read. E022: a schedule names a job that is not registered.
    E023: the job cannot take the schedule's arguments. Workers refuse to start on each."""
    return [
        Error(problem.message, hint=problem.hint, id=problem.id)
        for problem in inspect_schedules()[1]
    ]


@register(Tags.compatibility)
def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E002: the named channel layer does not exist. W003: its backend cannot be imported.
    W001: it cannot cross processes. W002: redis-py 8's socket timeout."""
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
    unusable = _import_error(backend)
    if unusable:
        return [
            Warning(
                f"Channel layer {alias!r} has BACKEND {backend!r}, which cannot be imported "
                f"({unusable}): notifications are off, and workers and waiters poll the "
                "database every POLL_INTERVAL.",
                hint="Install the layer's package (channels_redis: pip install "
                "'django-jobqueue[redis]'), correct BACKEND, or set "
                "JOBQUEUE['CHANNEL_LAYER'] = None to say polling is intended.",
                id="django_jobqueue.W003",
            )
        ]
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


def _import_error(path: str) -> str | None:
    """Why the dotted ``path`` cannot be imported, or None when it can."""
    from django.utils.module_loading import import_string

    try:
        import_string(path)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


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


# -- limits per key (docs/guide/limits-per-key.md) -------------------------------------------


@register(Tags.compatibility)
def check_limits(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E013: ``LIMITS`` is malformed. E014: ``LIMITS_CACHE`` is not a django-redis cache.
    E015: a job's ``limit`` key has no entry in ``LIMITS``."""
    user = getattr(settings, "JOBQUEUE", None)
    if not isinstance(user, dict):
        return []
    errors: list[Any] = []
    configured = user.get("LIMITS") or {}
    valid = isinstance(configured, dict)
    if not valid:
        errors.append(
            Error(
                "JOBQUEUE['LIMITS'] must be a dict of key -> limits.",
                hint="LIMITS = {'partner-api': {'concurrency': 4, 'rate': '100/m'}, "
                "'tenant:*': {'concurrency': 2}}",
                id="django_jobqueue.E013",
            )
        )
    else:
        for pattern, entry in configured.items():
            try:
                parse_rule(pattern, entry)
            except LimitConfigError as exc:
                valid = False
                errors.append(
                    Error(
                        f"JOBQUEUE['LIMITS']: {exc}",
                        hint="An entry is {'concurrency': N, 'rate': 'N/s' | 'N/m' | 'N/h'} "
                        "(either or both); a key is exact, or a prefix ending in '*'.",
                        id="django_jobqueue.E013",
                    )
                )
    errors += _check_limits_cache(user.get("LIMITS_CACHE"))
    if valid:
        errors += _check_job_limits()
    return errors


def _check_limits_cache(alias: Any) -> list[Any]:
    if alias is None:
        return []
    caches = getattr(settings, "CACHES", {}) or {}
    backend = str(caches[alias].get("BACKEND", "")) if alias in caches else None
    if backend is not None and backend.startswith("django_redis."):
        return []
    problem = "is not in CACHES" if backend is None else f"uses {backend!r}"
    return [
        Error(
            f"JOBQUEUE['LIMITS_CACHE'] names the cache {alias!r}, which {problem}: limits "
            "are held in Redis through a django-redis cache only.",
            hint="Point it at a cache with BACKEND 'django_redis.cache.RedisCache' (pip "
            "install 'django-jobqueue[limits]'), or set it to None to hold the limits in "
            "the database.",
            id="django_jobqueue.E014",
        )
    ]


def _check_job_limits() -> list[Any]:
    errors = []
    for name in registry.names():
        key = registry.get(name).limit
        if key is not None and rule_for(key) is None:
            errors.append(
                Error(
                    f"Job {name!r} has limit={key!r}, which has no entry in "
                    "JOBQUEUE['LIMITS']: its jobs would be claimed without a limit.",
                    hint=f"Add {key!r} (or a pattern such as '{key.split(':')[0]}:*') to "
                    "JOBQUEUE['LIMITS'].",
                    id="django_jobqueue.E015",
                )
            )
    return errors
