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
#: The longest a job's keys may be, joined (the ``limit_key`` column's length).
KEYS_MAX_LENGTH = 1000


class LimitConfigError(ValueError):
    """``JOBQUEUE["LIMITS"]`` or one of its entries is malformed."""


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
            f"rate {value!r} is not of the form 'N/s', 'N/m' or 'N/h' with N >= 1 (e.g. '100/m')."
        )
    return int(match.group(1)), _PERIODS[match.group(2)]


def parse_rule(pattern: Any, entry: Any) -> Rule:
    """Validate one entry of ``LIMITS``; raise :class:`LimitConfigError` saying what is wrong."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > KEY_MAX_LENGTH:
        raise LimitConfigError(f"key {pattern!r} must be a str of 1 to {KEY_MAX_LENGTH} chars.")
    if "*" in pattern[:-1] or pattern == "*":
        raise LimitConfigError(
            f"key {pattern!r}: '*' may only end a key, after a prefix (e.g. 'tenant:*')."
        )
    if not isinstance(entry, dict):
        raise LimitConfigError(
            f"LIMITS[{pattern!r}] must be a dict such as {{'concurrency': 4, 'rate': '100/m'}}."
        )
    unknown = sorted(set(entry) - {"concurrency", "rate"})
    if unknown:
        raise LimitConfigError(
            f"LIMITS[{pattern!r}] has unknown keys {unknown}; use 'concurrency' and 'rate'."
        )
    if not entry:
        raise LimitConfigError(f"LIMITS[{pattern!r}] sets neither 'concurrency' nor 'rate'.")
    concurrency = entry.get("concurrency")
    if concurrency is not None and (
        type(concurrency) is not int or not 1 <= concurrency <= 2**31 - 1
    ):
        raise LimitConfigError(
            f"LIMITS[{pattern!r}]['concurrency'] must be a whole number >= 1, not {concurrency!r}."
        )
    count, period = parse_rate(entry["rate"]) if entry.get("rate") is not None else (None, None)
    return Rule(pattern, concurrency, count, period)


_parsed: tuple[object, dict[str, Rule]] | None = None


def rules() -> dict[str, Rule]:
    """Every entry of ``LIMITS``, parsed once per settings change (raises
    :class:`LimitConfigError` on the first bad one; ``manage.py check`` lists them all)."""
    global _parsed
    settings = conf.get_settings()  # the same object until JOBQUEUE changes
    if _parsed is not None and _parsed[0] is settings:
        return _parsed[1]
    configured = settings.get("LIMITS") or {}
    if not isinstance(configured, dict):
        raise LimitConfigError("JOBQUEUE['LIMITS'] must be a dict of key -> limits.")
    parsed = {pattern: parse_rule(pattern, entry) for pattern, entry in configured.items()}
    _parsed = (settings, parsed)
    return parsed


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
