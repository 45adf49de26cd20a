"""Validation of job options, shared by ``@job(...)`` and ``.using(...)``.

Every check runs at the call site, before anything is written, and says what to pass instead.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from . import conf
from .base import PARENT_FAILURE_CHOICES
from .exceptions import InvalidJobError
from .limits import KEYS_MAX_LENGTH, LimitConfigError, join, rule_for, with_queue

JOB_ID_MAX_LENGTH = 255
USING_OPTIONS = (
    "job_id",
    "queue",
    "priority",
    "run_after",
    "group",
    "max_attempts",
    "result_ttl",
    "timeout",
    "time_limit",
    "limit",
    "after",
    "parent_failure",
    "metadata",
    "on_duplicate",
)
#: What enqueueing an id that exists does (docs/guide/uniqueness.md): "return" the existing
#: job; "replace" a queued one's arguments, ``run_after`` and priority (else as "rerun");
#: "rerun" a finished one, and queue one more run after a running one.
ON_DUPLICATE = ("return", "replace", "rerun")


class _Unset:
    """The type of :data:`UNSET`: an option not given, so the setting decides."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


#: An option that was not given (distinct from None, which can be a value of its own).
UNSET = _Unset()

#: The longest wait accepted (``timeout``), in seconds: a year, far below what the
#: platform's timers hold (``threading.TIMEOUT_MAX``, about 292 years on 64-bit Linux).
TIMEOUT_MAX = 366 * 86400
#: The longest time limit accepted, in seconds (a week): a longer one is a mistake.
TIME_LIMIT_MAX = int(conf.WEEK)
_QUEUE_RE = conf.QUEUE_NAME
_INT32 = 2**31 - 1


#: Characters refused in job ids and groups, which are written raw into log lines: control
#: characters (Cc), lone surrogates (Cs), invisible format characters such as the bidi
#: overrides U+202E and U+2066-U+2069 (Cf), and the line and paragraph separators U+2028
#: and U+2029 (Zl, Zp), which break a log line or make it read differently.
_REFUSED_CATEGORIES = frozenset(("Cc", "Cs", "Cf", "Zl", "Zp"))


def _unprintable(value: str) -> str | None:
    """The first character of ``value`` that must not appear in an id or a group, or None."""
    if value.isascii():
        if value.isprintable():
            return None
        return next(char for char in value if not char.isprintable())
    for char in value:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            return char
    return None


def _describe(char: str) -> str:
    name = unicodedata.name(char, "") if unicodedata.category(char) != "Cs" else "SURROGATE"
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


#: Celery's words for this queue's options and verbs: where one is used, the error names ours.
CELERY_WORDS = {
    "max_retries": "max_attempts, which counts the first attempt too: max_retries=3 is "
    "max_attempts=4",
    "bind": "@job(takes_context=True): the first parameter receives a JobContext",
    "countdown": ".using(run_after=timedelta(seconds=...))",
    "eta": ".using(run_after=<a datetime>)",
    "delay": "enqueue(...)",
    "apply_async": ".using(<options>).enqueue(...)",
}


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """The hint for an unknown ``name``: what Celery's word is here, or the closest valid one."""
    if name in CELERY_WORDS:
        return f" (Celery's {name}; here: {CELERY_WORDS[name]})"
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_options(given: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    hints = [f"{name!r}{did_you_mean(name, valid)}" for name in unknown]
    raise InvalidJobError(
        f"Unknown option{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for {where}; "
        f"valid options are: {', '.join(valid)}."
    )


def check_job_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidJobError(f"job_id must be a str, not {type(value).__name__}: {value!r}.")
    if not value or len(value) > JOB_ID_MAX_LENGTH:
        raise InvalidJobError(
            f"job_id must be 1 to {JOB_ID_MAX_LENGTH} characters long, not {len(value)}; "
            "for long natural keys use a hash, e.g. hashlib.sha256(key.encode()).hexdigest()."
        )
    if value != value.strip():
        raise InvalidJobError(
            f"job_id {value!r} has surrounding whitespace; use printable characters only."
        )
    bad = _unprintable(value)
    if bad is not None:
        raise InvalidJobError(
            f"job_id {value!r} contains {_describe(bad)}: control characters, invisible format "
            "characters and line separators are refused; use printable characters (letters of "
            "any script are fine)."
        )
    return value


def check_queue(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidJobError(f"queue must be a str, not {type(value).__name__}: {value!r}.")
    if not _QUEUE_RE.fullmatch(value):
        raise InvalidJobError(
            f"queue {value!r} is not a valid queue name: use 1 to 100 ASCII letters, digits, "
            "'_', '-' or '.'."
        )
    return value


def check_priority(value: Any) -> int:
    if type(value) is not int:
        raise InvalidJobError(
            f"priority must be an int (higher runs first), not {type(value).__name__}: {value!r}."
        )
    if not -_INT32 <= value <= _INT32:
        raise InvalidJobError(f"priority must be between {-_INT32} and {_INT32}, not {value}.")
    return value


def check_positive_int(name: str, value: Any, minimum: int) -> int:
    if type(value) is not int or value < minimum or value > _INT32:
        raise InvalidJobError(f"{name} must be an int of at least {minimum}, not {value!r}.")
    return value


def check_group(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidJobError(f"group must be a str or None, not {type(value).__name__}.")
    if not value or len(value) > 200:
        raise InvalidJobError(f"group must be 1 to 200 printable characters, not {value!r}.")
    bad = _unprintable(value)
    if bad is not None:
        raise InvalidJobError(
            f"group {value!r} contains {_describe(bad)}: control characters, invisible format "
            "characters and line separators are refused; use printable characters (letters of "
            "any script are fine)."
        )
    return value


def check_run_after(value: Any) -> timedelta | datetime | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, datetime):
        if timezone.is_naive(value) and _uses_tz():
            raise InvalidJobError(
                "run_after is a naive datetime but USE_TZ is True; pass an aware datetime "
                "(django.utils.timezone.now() + timedelta(...)) or a timedelta."
            )
        if timezone.is_aware(value) and not _uses_tz():
            raise InvalidJobError(
                "run_after is an aware datetime but USE_TZ is False; pass a naive local "
                "datetime or a timedelta."
            )
        return value
    raise InvalidJobError(
        f"run_after must be a timedelta or a datetime, not {type(value).__name__}: {value!r}."
    )


def check_timeout(value: Any) -> float | None:
    """None (``WAIT_TIMEOUT`` decides) or a positive number of seconds up to
    :data:`TIMEOUT_MAX`: checked at the call site, as a longer one would only fail (in the
    platform's timers) after the job was written."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidJobError(f"timeout must be a positive number of seconds, not {value!r}.")
    if value != value or not value <= TIMEOUT_MAX:
        raise InvalidJobError(
            f"timeout must be a finite number of seconds up to {TIMEOUT_MAX} (a year), not "
            f"{value!r}; for a longer job, enqueue it and read its handle later."
        )
    return float(value)


def check_time_limit(value: Any) -> float | None:
    """None (no limit) or a positive, finite number of seconds up to a week."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= TIME_LIMIT_MAX
    ):
        raise InvalidJobError(
            f"time_limit must be a positive number of seconds up to {TIME_LIMIT_MAX} (a week), "
            f"or None for no limit, not {value!r}."
        )
    return float(value)


def check_limit(value: Any) -> str | None:
    """None, or the stored form (:func:`~django_jobqueue.limits.join`) of a key, or of a
    list or tuple of distinct keys, that ``JOBQUEUE["LIMITS"]`` has an entry (or a
    ``prefix:*`` pattern) for each."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        return _check_limit_key(value)
    if not value:
        raise InvalidJobError("limit=[] names no key: give one key or more, or None.")
    keys = [_check_limit_key(key) for key in value]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise InvalidJobError(
            f"limit={list(value)!r} names {', '.join(map(repr, duplicates))} more than once: "
            "name each key once."
        )
    stored = join(keys)
    if len(stored) > KEYS_MAX_LENGTH:
        raise InvalidJobError(
            f"limit={list(value)!r} is too long: its keys may have at most "
            f"{KEYS_MAX_LENGTH} characters in all."
        )
    return stored


def limit_with_queue(stored: str | None, queue: str) -> str | None:
    """A job's limit keys (their stored form) with its queue's implicit key added when
    ``JOBQUEUE["QUEUES"]`` gives the queue limits (:func:`~django_jobqueue.limits.with_queue`)."""
    try:
        return with_queue(stored, queue)
    except LimitConfigError as exc:
        raise InvalidJobError(
            f"JOBQUEUE['LIMITS'] or JOBQUEUE['QUEUES'] is malformed: {exc} Fix it (manage.py "
            "check lists every fault); nothing was written."
        ) from None


def _check_limit_key(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or _unprintable(value):
        raise InvalidJobError(
            f"limit must be a key of 1 to 200 printable characters, not {value!r}."
        )
    try:
        rule = rule_for(value)
    except LimitConfigError as exc:
        raise InvalidJobError(f"JOBQUEUE['LIMITS'] is malformed: {exc}") from None
    if rule is None:
        raise InvalidJobError(
            f"limit {value!r} has no entry in JOBQUEUE['LIMITS']: add {value!r} (or a pattern "
            f"such as {value.split(':')[0] + ':*'!r}) with its 'concurrency' and/or 'rate'."
        )
    return value


def check_after(value: Any) -> tuple[str, ...]:
    """``after=``: a job handle (anything with a str ``id``, such as a ``TaskResult``), a job
    id, or a list or tuple of them; the parents' ids, each once, in order. Whether they exist
    is checked when the job is enqueued."""
    items = value if isinstance(value, list | tuple) else [value]
    ids: list[str] = []
    for item in items:
        job_id = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(job_id, str) or isinstance(item, list | tuple):
            raise InvalidJobError(
                f"after= takes a job handle, a job id or a list of them, not "
                f"{type(item).__name__}: {item!r}. Nothing was written."
            )
        check_job_id(job_id)
        if job_id not in ids:
            ids.append(job_id)
    return tuple(ids)


def check_parent_failure(value: Any) -> str:
    """``parent_failure=``: one of :data:`~django_jobqueue.base.PARENT_FAILURE_CHOICES`."""
    if value not in PARENT_FAILURE_CHOICES or not isinstance(value, str):
        raise InvalidJobError(
            f"parent_failure must be 'cancel' (the job is cancelled when a parent fails or is "
            f"cancelled) or 'run' (it runs anyway), not {value!r}."
        )
    return value


def check_on_duplicate(value: Any) -> str:
    if value not in ON_DUPLICATE or not isinstance(value, str):
        raise InvalidJobError(
            f"on_duplicate must be one of {', '.join(map(repr, ON_DUPLICATE))}, not {value!r}."
        )
    return value


def resolve_run_after(value: timedelta | datetime | None, now: datetime) -> datetime | None:
    """The absolute time a job may start; None means at once."""
    if value is None:
        return None
    try:
        when = now + value if isinstance(value, timedelta) else value
    except OverflowError:
        raise InvalidJobError(f"run_after {value!r} is too far in the future.") from None
    if timezone.is_naive(when) and _uses_tz():
        when = timezone.make_aware(when)
    return when if when > now else None


def _uses_tz() -> bool:
    from django.conf import settings

    return bool(settings.USE_TZ)


CHECKS = {
    "job_id": check_job_id,
    "queue": check_queue,
    "priority": check_priority,
    "run_after": check_run_after,
    "group": check_group,
    "max_attempts": lambda value: check_positive_int("max_attempts", value, 1),
    "result_ttl": lambda value: check_positive_int("result_ttl", value, 0),
    "timeout": check_timeout,
    "time_limit": check_time_limit,
    "limit": check_limit,
    "after": check_after,
    "parent_failure": check_parent_failure,
    "metadata": lambda value: value,  # serialization.check_metadata, in using()
    "on_duplicate": check_on_duplicate,
}


def check_options(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate ``using()`` options; return them unchanged or raise :class:`InvalidJobError`."""
    unknown_options(options, USING_OPTIONS, where)
    return {name: CHECKS[name](value) for name, value in options.items()}
