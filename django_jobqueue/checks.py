"""System checks (``manage.py check``), tagged ``compatibility`` and :data:`TAG`. Each id has a
line in docs/reference/checks.md."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import router

from . import conf
from .conf import DEFAULTS, KEYS, Fault, Key, behind_transaction_pooler
from .limits import LimitConfigError, parse_queue, parse_rule, rule_for, split
from .periodic import inspect_schedules
from .registry import registry
from .routers import APP_LABEL, ROUTER_PATH, QueueRouter

#: This app's checks, the ones ``runjobworker`` runs at start-up (``check --tag django_jobqueue``).
TAG = APP_LABEL

# -- the JOBQUEUE setting, judged by the table of its keys (conf.Settings) ------------------

#: The id of each fault one key's value can have (docs/reference/checks.md).
FAULT_IDS = {
    Fault.TYPE: "django_jobqueue.E004",
    Fault.MINIMUM: "django_jobqueue.E005",
    Fault.FORM: "django_jobqueue.E006",
    Fault.FINITE: "django_jobqueue.E010",
    Fault.MAXIMUM: "django_jobqueue.E011",
    Fault.ENTRY: "django_jobqueue.E016",
}


@register(Tags.compatibility, TAG)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E001: JOBQUEUE is not a dict. E003: an unknown key. E004: a value of the wrong type.
    E005: below its minimum. E006: DEFAULT_QUEUE is not a queue name. E010: NaN or infinite.
    E011: above its maximum. E012: HEARTBEAT_INTERVAL is not well under LEASE_SECONDS.
    E016: a dict (``RESULT_TTL`` per outcome) names an entry the key does not know; its
    entries are judged as values of the key (E004, E005, E010, E011), one error each."""
    user = getattr(settings, "JOBQUEUE", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [
            Error(
                f"The JOBQUEUE setting must be a dict, not a {type(user).__name__}.",
                hint="JOBQUEUE = {'DEFAULT_QUEUE': 'default', ...}; every key is optional.",
                id="django_jobqueue.E001",
            )
        ]
    errors = [_unknown_key(key) for key in sorted(set(user) - set(KEYS), key=str)]
    for name, key in KEYS.items():
        if name in user and key.per and isinstance(user[name], dict):
            errors += [
                _entry_error(key, user[name], *found) for found in key.entry_faults(user[name])
            ]
            continue
        fault = key.fault(user[name]) if name in user else None
        if fault is not None:
            errors.append(_fault_error(key, user[name], fault))
    errors.extend(_heartbeat_errors(user))
    return errors


def _unknown_key(key: Any) -> Error:
    close = difflib.get_close_matches(str(key), KEYS, n=1) if isinstance(key, str) else []
    guess = f"Did you mean {close[0]!r}? " if close else ""
    return Error(
        f"Unknown key {key!r} in the JOBQUEUE setting.",
        hint=guess + "Valid keys: " + ", ".join(sorted(KEYS)) + ".",
        id="django_jobqueue.E003",
    )


def _fault_error(key: Key[Any], value: Any, fault: Fault) -> Error:
    fix = f"Leave it out for the default, {key.default!r}; or set {key.requirement()}."
    if fault is Fault.FINITE:
        fix = "NaN and infinity misbehave at run time (a NaN passes every comparison). " + fix
    elif fault is Fault.MAXIMUM and key.why:
        fix = f"{key.why} {fix}"
    kind = f" (a {type(value).__name__})" if fault is Fault.TYPE else ""
    return Error(
        f"JOBQUEUE[{key.name!r}] is {value!r}{kind}; it must be {key.requirement()}.",
        hint=fix,
        id=FAULT_IDS[fault],
    )


def _entry_error(key: Key[Any], value: dict[Any, Any], entry: Any, fault: Fault) -> Error:
    """One bad entry of a dict of :attr:`Key.per` entries (``RESULT_TTL`` per outcome)."""
    names = ", ".join(map(repr, key.per))
    if fault is Fault.ENTRY:
        close = difflib.get_close_matches(str(entry), key.per, n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        return Error(
            f"JOBQUEUE[{key.name!r}] has the entry {entry!r}, which is not one of {names}.",
            hint=f"{guess}Use only {names} (a missing one keeps the default, {key.default!r}); "
            f"or set one number for every outcome. Until fixed, the default applies.",
            id=FAULT_IDS[fault],
        )
    single = dataclasses.replace(key, per=())
    return Error(
        f"JOBQUEUE[{key.name!r}][{entry!r}] is {value[entry]!r}; it must be "
        f"{single.requirement()}.",
        hint=f"Leave the entry out for the default, {key.default!r}. Until fixed, the "
        "default applies to every outcome.",
        id=FAULT_IDS[fault],
    )


def _heartbeat_errors(user: dict[str, Any]) -> list[Error]:
    heartbeat = user.get("HEARTBEAT_INTERVAL")
    lease = user.get("LEASE_SECONDS", KEYS["LEASE_SECONDS"].default)
    if heartbeat is None or any(
        KEYS[name].fault(value) is not None
        for name, value in (("HEARTBEAT_INTERVAL", heartbeat), ("LEASE_SECONDS", lease))
    ):
        return []  # reported above
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


@register(Tags.compatibility, TAG)
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E020: JOBQUEUE['SCHEDULE'] or one of its entries is malformed. E021: a cron
    expression croniter cannot read, or one that never runs (or runs no more). E022: a
    schedule names a job that is not registered. E023: the job cannot take the schedule's
    arguments. Workers refuse to start on each."""
    return [
        Error(problem.message, hint=problem.hint, id=problem.id)
        for problem in inspect_schedules()[1]
    ]


@register(Tags.compatibility, TAG)
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


#: ``QUEUES``' faults (:attr:`LimitConfigError.fault`), one id each.
_QUEUE_FAULTS = {
    "setting": ("django_jobqueue.E060", "QUEUES = {'emails': {'concurrency': 5, 'rate': '100/m'}}"),
    "key": (
        "django_jobqueue.E061",
        "Name a queue: 1 to 100 ASCII letters, digits, '_', '-' or '.'.",
    ),
    "entry": (
        "django_jobqueue.E062",
        "An entry is {'concurrency': N, 'rate': 'N/s' | 'N/m' | 'N/h'}.",
    ),
    "concurrency": (
        "django_jobqueue.E063",
        "'concurrency' is a whole number >= 1 (jobs running at once).",
    ),
    "rate": ("django_jobqueue.E064", "'rate' is 'N/s', 'N/m' or 'N/h' with N >= 1, e.g. '100/m'."),
}


@register(Tags.compatibility, TAG)
def check_queue_limits(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E060: ``QUEUES`` is not a dict. For one of its entries: E061, a name that is not a
    queue name; E062, not a dict of 'concurrency' and/or 'rate'; E063, a bad 'concurrency';
    E064, a bad 'rate'."""
    user = getattr(settings, "JOBQUEUE", None)
    queues = user.get("QUEUES") or {} if isinstance(user, dict) else {}
    if not isinstance(queues, dict):
        queues = {None: queues}  # the whole setting is the fault
    errors = []
    for name, entry in queues.items():
        try:
            if name is None:
                raise LimitConfigError(
                    f"must be a dict of queue name -> limits, not {entry!r}.",
                    "setting",
                )
            parse_queue(name, entry)
        except LimitConfigError as exc:
            code, hint = _QUEUE_FAULTS[exc.fault]
            where = f"[{name!r}]" if exc.fault == "rate" else ""
            errors.append(Error(f"JOBQUEUE['QUEUES']{where}: {exc}", hint=hint, id=code))
    return errors


@register(Tags.compatibility, TAG)
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
        stored = registry.get(name).limit
        for key in split(stored) if stored is not None else []:
            if rule_for(key) is not None:
                continue
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


@register(Tags.compatibility, TAG)
def check_pooler(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """W030 and W031: a PostgreSQL database marked as behind a transaction pooler (Django's
    ``DISABLE_SERVER_SIDE_CURSORS``, which a site behind PgBouncer in transaction pooling mode
    sets) has an option that needs a server session of its own, which such a pooler never
    keeps between transactions. The queue itself needs none: no session lock, no LISTEN, no
    server-side cursor, no ``SET``; its advisory locks are transaction-scoped."""
    problems: list[Any] = []
    for alias, database in settings.DATABASES.items():
        if not behind_transaction_pooler(database):
            continue
        options = database.get("OPTIONS") or {}
        if options.get("server_side_binding"):
            problems.append(
                Warning(
                    f"DATABASES[{alias!r}] is behind a transaction pooler "
                    "(DISABLE_SERVER_SIDE_CURSORS) with OPTIONS['server_side_binding'] on: "
                    "psycopg then prepares statements, which live in one server session, and "
                    "queries fail with 'prepared statement ... does not exist' when the pooler "
                    "hands the next transaction to another server connection.",
                    hint="Remove 'server_side_binding' (Django's default client-side binding "
                    "needs no session), or run PgBouncer 1.21+ with max_prepared_statements.",
                    id="django_jobqueue.W030",
                )
            )
        if "-c" in str(options.get("options") or "").replace("=", " ").split():
            problems.append(
                Warning(
                    f"DATABASES[{alias!r}] is behind a transaction pooler "
                    "(DISABLE_SERVER_SIDE_CURSORS) and sets server parameters in "
                    "OPTIONS['options'] ('-c ...'): PgBouncer refuses that startup parameter "
                    "('unsupported startup parameter: options') or, when told to ignore it, "
                    "drops the settings, so they never apply.",
                    hint="Set them on the role or database instead (ALTER ROLE ... SET ...; "
                    "ALTER DATABASE ... SET ...), which every pooled connection inherits.",
                    id="django_jobqueue.W031",
                )
            )
    return problems


@register(Tags.compatibility, TAG)
def check_context(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E041: an entry of ``JOBQUEUE["CONTEXT"]`` is not a dotted path (a value that is not a
    list is E004). E040: one of its classes cannot be imported (enqueues skip it and log
    why)."""
    value = conf.settings.CONTEXT  # the default when it is not a list (E004)
    if not all(isinstance(p, str) for p in value):
        return [
            Error(
                f"JOBQUEUE['CONTEXT'] must be a list of dotted paths of classes, not {value!r}.",
                hint='For example JOBQUEUE["CONTEXT"] = ["django_jobqueue.context.Locale"].',
                id="django_jobqueue.E041",
            )
        ]
    errors = []
    for path in value:
        reason = _import_error(path)
        if reason is not None:
            errors.append(
                Error(
                    f"JOBQUEUE['CONTEXT'] names {path!r}, which cannot be imported: {reason}.",
                    hint="Fix the dotted path or remove it; until then jobs are enqueued "
                    "without what it would capture.",
                    id="django_jobqueue.E040",
                )
            )
    return errors


# -- a database of its own (docs/guide/production.md) ----------------------------------------


@register(Tags.compatibility, TAG)
def check_database(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E050: ``JOBQUEUE["DATABASE"]`` is not an alias of ``DATABASES``. E051: it is set but
    ``QueueRouter`` is not in ``DATABASE_ROUTERS``. E053: a router ahead of ``QueueRouter``
    sends ``Job`` elsewhere. E052: the routers send the app's models to different aliases."""
    user = getattr(settings, "JOBQUEUE", None)
    alias = user.get("DATABASE") if isinstance(user, dict) else None
    if alias is not None and KEYS["DATABASE"].fault(alias) is None:
        problem = _database_error(alias)
        if problem is not None:
            return [problem]
    return _split_error()


def _database_error(alias: str) -> Error | None:
    if alias not in settings.DATABASES:
        return Error(
            f"JOBQUEUE['DATABASE'] is {alias!r}, which is not an alias of DATABASES.",
            hint="Add that database to DATABASES, correct the alias, or leave DATABASE out to "
            "keep the queue where the routers send it (the default database).",
            id="django_jobqueue.E050",
        )
    if not any(isinstance(each, QueueRouter) for each in router.routers):
        return Error(
            f"JOBQUEUE['DATABASE'] is {alias!r}, but {ROUTER_PATH} is not in "
            "DATABASE_ROUTERS: Django would still send the queue's models (the admin, "
            "migrate, Job.objects) to the default database.",
            hint=f"DATABASE_ROUTERS = [{ROUTER_PATH!r}, ...] (first, or ahead of any router "
            "with an opinion about django_jobqueue), then run "
            f"'manage.py migrate --database {alias}'.",
            id="django_jobqueue.E051",
        )
    routed = router.db_for_write(apps.get_model(APP_LABEL, "Job"))
    if routed != alias:
        return Error(
            f"JOBQUEUE['DATABASE'] is {alias!r}, but a router listed ahead of QueueRouter "
            f"sends the Job model to {routed!r}.",
            hint=f"Move {ROUTER_PATH!r} to the front of DATABASE_ROUTERS, or make that "
            "router return None for the django_jobqueue app.",
            id="django_jobqueue.E053",
        )
    return None


def _split_error() -> list[Any]:
    models = apps.get_app_config(APP_LABEL).get_models()
    aliases = {model.__name__: router.db_for_write(model) for model in models}
    if len(set(aliases.values())) < 2:
        return []
    where = ", ".join(f"{name} -> {alias!r}" for name, alias in sorted(aliases.items()))
    return [
        Error(
            f"The database routers send django_jobqueue's models to different databases "
            f"({where}): a job, its result and its dead letter are written in one "
            "transaction, which cannot span databases.",
            hint=f"Route the whole app to one alias: set JOBQUEUE['DATABASE'] and put "
            f"{ROUTER_PATH!r} first in DATABASE_ROUTERS, or make your router decide by "
            "app_label ('django_jobqueue'), not by model.",
            id="django_jobqueue.E052",
        )
    ]
