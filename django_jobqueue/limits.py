"""``JOBQUEUE["LIMITS"]``: concurrency and rate limits per key, parsed and matched.

::

    JOBQUEUE["LIMITS"] = {
        "partner-api": {"concurrency": 4, "rate": "100/m"},
        "tenant:*": {"concurrency": 2},        # each tenant:<x> key separately
    }

An exact key wins over a pattern; among patterns the longest prefix wins. This module only
reads the setting; holding the limits is the worker's (``worker.limiter``).

A job may have several keys (``limit=["partner-api", "tenant:7"]``): it runs only when every
key allows it. They are stored in the job's one ``limit_key`` column, sorted (the canonical
order every holder takes them in) and joined by :data:`SEPARATOR`, which no key may contain
(:func:`join`, :func:`split`).

``JOBQUEUE["QUEUES"]`` gives a queue limits of its own, across every worker and host::

    JOBQUEUE["QUEUES"] = {"emails": {"concurrency": 5, "rate": "100/m"}}

Each such queue is an implicit key, ``@queue:<name>`` (:func:`queue_key`), with the queue's
limits as its rule: a job enqueued to the queue while it has an entry gets the key added to
its own (:func:`with_queue`), and is held through the same limiter as any key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import conf

_RATE_RE = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: The longest window a ``rate`` can have, in seconds: a recorded start older than this
#: counts for no key any more, whatever the settings say now.
LONGEST_RATE_PERIOD = max(_PERIODS.values())
#: What a key may be made of: printable, no spaces at the ends, at most 200 characters.
KEY_MAX_LENGTH = 200
#: Between the keys of a job with several (a key is printable: it never holds one).
SEPARATOR = "\n"
#: The longest a job's own keys may be, joined.
KEYS_MAX_LENGTH = 1000


#: What an entry of ``LIMITS`` may set.
LIMIT_KEYS = ("concurrency", "rate")
#: What an entry of ``QUEUES`` may set: limits, and the alias of the database that holds the
#: queue's jobs (routers.queue_aliases() reads it; check E054/E055 judge the alias).
QUEUE_ENTRY_KEYS = (*LIMIT_KEYS, "database")

#: The implicit key of a queue with limits (``JOBQUEUE["QUEUES"]``): this and its name.
QUEUE_KEY_PREFIX = "@queue:"
#: The ``limit_key`` column's length: a job's own keys and its queue's key.
STORED_MAX_LENGTH = KEYS_MAX_LENGTH + len(SEPARATOR) + len(QUEUE_KEY_PREFIX) + 100


class LimitConfigError(ValueError):
    """``JOBQUEUE["LIMITS"]`` or ``JOBQUEUE["QUEUES"]``, or one of their entries, is
    malformed. ``fault`` says what: "setting" (not a dict), "key" (a key, or a queue's
    name), "entry" (not a dict of 'concurrency' and/or 'rate'), "concurrency" or "rate"."""

    def __init__(self, message: str, fault: str = "entry") -> None:
        super().__init__(message)
        self.fault = fault


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``LIMITS``: at most ``concurrency`` running at once, at most
    ``rate_count`` starts per ``rate_period`` seconds (sliding window). None: no such limit."""

    pattern: str
    concurrency: int | None = None
    rate_count: int | None = None
    rate_period: float | None = None

    @property
    def rate(self) -> str | None:
        if self.rate_count is None or self.rate_period is None:
            return None
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.rate_period]
        return f"{self.rate_count}/{unit}"


def parse_rate(value: Any) -> tuple[int, float]:
    """``"100/m"`` -> ``(100, 60.0)``."""
    match = _RATE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise LimitConfigError(
            f"rate {value!r} is not of the form 'N/s', 'N/m' or 'N/h' with N >= 1 (e.g. '100/m').",
            "rate",
        )
    return int(match.group(1)), _PERIODS[match.group(2)]


def parse_rule(pattern: Any, entry: Any, setting: str = "LIMITS", name: Any = None) -> Rule:
    """Validate one entry of ``LIMITS`` (or, with ``setting`` and the queue's ``name``, of
    ``QUEUES``); raise :class:`LimitConfigError` saying what is wrong."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > KEY_MAX_LENGTH:
        raise LimitConfigError(
            f"key {pattern!r} must be a str of 1 to {KEY_MAX_LENGTH} chars.", "key"
        )
    if "*" in pattern[:-1] or pattern == "*":
        raise LimitConfigError(
            f"key {pattern!r}: '*' may only end a key, after a prefix (e.g. 'tenant:*').", "key"
        )
    where = pattern if name is None else name
    if not isinstance(entry, dict):
        raise LimitConfigError(
            f"{setting}[{where!r}] must be a dict such as {{'concurrency': 4, 'rate': '100/m'}}."
        )
    known = QUEUE_ENTRY_KEYS if setting == "QUEUES" else LIMIT_KEYS
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise LimitConfigError(
            f"{setting}[{where!r}] has unknown keys {unknown}; "
            f"use {' and '.join(map(repr, known))}."
        )
    if "database" in entry and (not isinstance(entry["database"], str) or not entry["database"]):
        raise LimitConfigError(
            f"{setting}[{where!r}]['database'] must be an alias of DATABASES (a str), "
            f"not {entry['database']!r}."
        )
    if not entry:
        raise LimitConfigError(f"{setting}[{where!r}] sets neither 'concurrency' nor 'rate'.")
    concurrency = entry.get("concurrency")
    if concurrency is not None and (
        type(concurrency) is not int or not 1 <= concurrency <= 2**31 - 1
    ):
        raise LimitConfigError(
            f"{setting}[{where!r}]['concurrency'] must be a whole number >= 1, "
            f"not {concurrency!r}.",
            "concurrency",
        )
    count, period = parse_rate(entry["rate"]) if entry.get("rate") is not None else (None, None)
    return Rule(pattern, concurrency, count, period)


_parsed: tuple[object, dict[str, Rule]] | None = None


def rules() -> dict[str, Rule]:
    """Every entry of ``LIMITS``, and of ``QUEUES`` under its :func:`queue_key`, parsed once
    per settings change (raises :class:`LimitConfigError` on the first bad one;
    ``manage.py check`` lists them all)."""
    global _parsed
    settings = conf.get_settings()  # the same object until JOBQUEUE changes
    if _parsed is not None and _parsed[0] is settings:
        return _parsed[1]
    configured = settings.get("LIMITS") or {}
    if not isinstance(configured, dict):
        raise LimitConfigError("JOBQUEUE['LIMITS'] must be a dict of key -> limits.", "setting")
    parsed = {pattern: parse_rule(pattern, entry) for pattern, entry in configured.items()}
    queues = settings.get("QUEUES") or {}
    if not isinstance(queues, dict):
        raise LimitConfigError(
            "JOBQUEUE['QUEUES'] must be a dict of queue name -> limits.", "setting"
        )
    for name, entry in queues.items():
        rule = parse_queue(name, entry)
        if rule.concurrency is not None or rule.rate_count is not None:
            parsed[queue_key(name)] = rule  # an entry that only routes the queue: no limit
    _parsed = (settings, parsed)
    return parsed


def queue_key(name: str) -> str:
    """The implicit limit key of the queue ``name``."""
    return f"{QUEUE_KEY_PREFIX}{name}"


def parse_queue(name: Any, entry: Any) -> Rule:
    """Validate one entry of ``QUEUES``; raise :class:`LimitConfigError` saying what is
    wrong."""
    if not isinstance(name, str) or not conf.QUEUE_NAME.fullmatch(name):
        raise LimitConfigError(
            f"QUEUES: {name!r} is not a queue name (1 to 100 ASCII letters, digits, '_', '-' "
            "or '.').",
            "key",
        )
    return parse_rule(queue_key(name), entry, setting="QUEUES", name=name)


def with_queue(stored: str | None, queue: str) -> str | None:
    """A job's limit keys (``stored``: its own, None: none) with its queue's key added when
    ``QUEUES`` gives the queue limits."""
    key = queue_key(queue)
    if key not in rules():
        return stored
    return key if stored is None else join([*split(stored), key])


def rule_for(key: str) -> Rule | None:
    """The rule that governs ``key``: its exact entry, else the longest matching
    ``prefix*`` pattern, else None."""
    all_rules = rules()
    exact = all_rules.get(key)
    if exact is not None:
        return exact
    best: Rule | None = None
    for pattern, rule in all_rules.items():
        matches = pattern.endswith("*") and key.startswith(pattern[:-1])
        if matches and (best is None or len(pattern) > len(best.pattern)):
            best = rule
    return best


def join(keys: list[str] | tuple[str, ...]) -> str:
    """The stored form of a job's keys: sorted, joined by :data:`SEPARATOR` (one key: itself)."""
    return SEPARATOR.join(sorted(keys))


def split(stored: str) -> list[str]:
    """A job's keys, in canonical (sorted) order, from their stored form."""
    return stored.split(SEPARATOR)
