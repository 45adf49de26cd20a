"""The ``JOBQUEUE`` setting: one table of its keys, each with its type, default and bounds.

:class:`Settings` is that table. Read a key as a typed attribute when it is used,
``conf.settings.LEASE_SECONDS`` (a float): the project's ``JOBQUEUE`` is merged over the
defaults on first use, and read again when it changes (``override_settings`` in tests).
``manage.py check`` (checks.py) judges the project's values with the same :class:`Key`
declarations, and a test compares docs/reference/settings.md with them.

A value that cannot work (of the wrong type, NaN or infinite, out of its bounds, a malformed
name) is an error in ``manage.py check``; here it is replaced by its default, with one warning
in the log, so that a process started without the checks never runs with it. ``LIMITS`` and
``SCHEDULE`` hold structures judged entry by entry by their own modules (limits.py,
periodic.py), which the worker uses too: a bad entry there holds back only what it concerns.

Adding a key is one :class:`Key` line in :class:`Settings` and one section in
docs/reference/settings.md.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, overload

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .base import FINISHED

logger = logging.getLogger("django_jobqueue")

T = TypeVar("T")

INT32 = 2**31 - 1
DAY = 86_400.0
WEEK = 7 * DAY
MIB = 2**20
#: A queue's name: ``DEFAULT_QUEUE``, and every ``queue=`` option (options.py).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: The outcomes ``RESULT_TTL`` may give a time of their own: the finished statuses.
OUTCOMES: tuple[str, ...] = FINISHED


class Fault(enum.Enum):
    """Why one key's value cannot work. ``manage.py check`` gives each its own id."""

    TYPE = "type"  # not of the key's type (None where None is not allowed)
    FINITE = "finite"  # NaN or infinite
    MINIMUM = "minimum"  # below the minimum (or at it, where the minimum is excluded)
    MAXIMUM = "maximum"  # above the maximum
    FORM = "form"  # a str not of the key's form (a queue name)
    ENTRY = "entry"  # a dict (where a key takes one per name) with a name it does not know


_WORDS = {
    int: "an int",
    float: "a number",
    bool: "True or False",
    str: "a str",
    object: "any value",
}


@dataclass(frozen=True, eq=False)
class Key(Generic[T]):
    """One key of ``JOBQUEUE``: its type, default and bounds, declared once.

    A class attribute of :class:`Settings`, where reading it gives the project's value.
    ``kind`` is the type of a value (``float`` accepts ints too, and is read as a float;
    ``bool`` is never taken for an int); ``object`` accepts anything (``LIMITS``,
    ``SCHEDULE``: their own modules judge them). Both bounds are included, unless ``above``
    says the minimum itself is refused. ``none`` is what ``None`` means, if it is allowed.
    ``per`` names the entries of a dict the key also accepts, each a value of the kind
    (``RESULT_TTL`` per outcome); it is read as a dict of every name, the missing ones
    given the default.
    """

    default: T
    kind: type
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    none: str = ""
    form: re.Pattern[str] | None = None
    #: How a value of the kind is described, where "a str" would not say enough.
    words: str = ""
    #: Why the maximum is where it is (for the check's hint).
    why: str = ""
    per: tuple[str, ...] = ()
    name: str = field(default="", init=False, compare=False)

    def __set_name__(self, owner: type[Any], name: str) -> None:
        object.__setattr__(self, "name", name)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Key[T]: ...

    @overload
    def __get__(self, obj: Settings, owner: type[Any]) -> T: ...

    def __get__(self, obj: Settings | None, owner: type[Any]) -> Key[T] | T:
        if obj is None:
            return self
        # On every settings read of the hot paths: the merged dict at hand, no calls.
        value: T = (obj._merged or obj.merged())[self.name]
        return value

    def fault(self, value: Any) -> Fault | None:
        """Why ``value`` cannot work for this key, or None if it can (for a dict of
        :attr:`per` entries: the first entry's fault, in :meth:`entry_faults`' order)."""
        if self.kind is object:
            return None
        if self.per and isinstance(value, dict):
            return next((fault for _, fault in self.entry_faults(value)), None)
        if value is None:
            return None if self.none else Fault.TYPE
        if self.kind in (int, float) and isinstance(value, float) and not math.isfinite(value):
            return Fault.FINITE
        if not self._of_kind(value):
            return Fault.TYPE
        if self.minimum is not None and (
            value <= self.minimum if self.above else value < self.minimum
        ):
            return Fault.MINIMUM
        if self.maximum is not None and value > self.maximum:
            return Fault.MAXIMUM
        if self.form is not None and not self.form.fullmatch(value):
            return Fault.FORM
        return None

    def entry_faults(self, value: dict[Any, Any]) -> list[tuple[Any, Fault]]:
        """For a dict of :attr:`per` entries: ``(name, fault)`` of each entry that cannot
        work, names it does not know first."""
        one = dataclasses.replace(self, per=())
        unknown = [(name, Fault.ENTRY) for name in value if name not in self.per]
        faults = [(name, one.fault(value[name])) for name in self.per if name in value]
        return unknown + [(name, fault) for name, fault in faults if fault is not None]

    def _of_kind(self, value: object) -> bool:
        if isinstance(value, bool) is not (self.kind is bool):  # bool is an int, not a number
            return False
        return isinstance(value, (int, float) if self.kind is float else self.kind)

    def read(self, value: Any) -> T:
        """A valid ``value`` as the key's type (a float for a number; a dict of every
        :attr:`per` name for a dict)."""
        if self.per and isinstance(value, dict):
            base = self.read(self.default)
            return cast(T, {name: self.read(value.get(name, base)) for name in self.per})
        return cast(T, float(value) if self.kind is float and value is not None else value)

    def bounds(self) -> tuple[str, str]:
        """The minimum and the maximum in words ("at least 1", "more than 0"; "" for none)."""
        low = "" if self.minimum is None else number(self.minimum)
        if low:
            low = f"more than {low}" if self.above else f"at least {low}"
        high = "" if self.maximum is None else f"at most {number(self.maximum)}"
        return low, high

    def requirement(self) -> str:
        """What the key accepts, in words, for messages: "an int, at least 1 and at most 9"."""
        text = self.words or _WORDS[self.kind]
        bounds = " and ".join(bound for bound in self.bounds() if bound)
        if bounds:
            text += f", {bounds}"
        if self.none:
            text += f"; or None ({self.none})"
        if self.per:
            text += f"; or a dict of {', '.join(map(repr, self.per))} to such values"
        return text


def number(value: float) -> str:
    """A bound as written in the docs and the checks: ``86400``, ``0.001``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_JSONB = "PostgreSQL's jsonb holds at most 255 MB; keep large data elsewhere."


class Settings:
    """``JOBQUEUE``, read on access: one typed attribute per key, the table of its keys."""

    # The contract (DESIGN.md).
    DEFAULT_QUEUE = Key(
        "default",
        str,
        form=QUEUE_NAME,
        words="a queue name (1 to 100 ASCII letters, digits, '_', '-' or '.')",
    )
    MAX_ATTEMPTS = Key(
        3, int, 1, INT32, why="It is stored in a 32-bit integer column: every enqueue would fail."
    )
    # Seconds a finished job is kept, or {"completed": s, "failed": s, "cancelled": s}
    # (read with result_ttl(): a job's own result_ttl option applies to every outcome).
    RESULT_TTL: Key[int | dict[str, int]] = Key(
        3600,
        int,
        0,
        366 * DAY,
        why="A year at most: results are meant to be collected, not archived.",
        per=OUTCOMES,
    )
    WAIT_TIMEOUT: Key[float] = Key(30, float, 0, DAY, above=True)
    CHANNEL_LAYER: Key[str | None] = Key(
        "default", str, none="polling only", words="an alias of CHANNEL_LAYERS"
    )
    LEASE_SECONDS: Key[float] = Key(
        30,
        float,
        1,
        DAY,
        why="A day at most: a killed worker's jobs wait this long to run again.",
    )
    POLL_INTERVAL: Key[float] = Key(1.0, float, 0.001, 3600)
    # Beyond the contract.
    HEARTBEAT_INTERVAL: Key[float | None] = Key(
        None, float, 0.001, DAY, none="a third of LEASE_SECONDS"
    )
    RETRY_BACKOFF: Key[float] = Key(1.0, float, 0, DAY)  # before the first retry; doubles
    RETRY_BACKOFF_MAX: Key[float] = Key(600.0, float, 0, WEEK)
    NOTIFY_TIMEOUT: Key[float] = Key(0.5, float, 0.001, 60)  # every channel-layer call
    PREFETCH = Key(32, int, 0, 10_000)  # jobs a busy worker claims ahead of its free slots
    # PostgreSQL: names whose runs average at most this many seconds are claimed, run and
    # completed in one transaction (worker/shortpath.py); 0 turns that off. A window lasts
    # at most 5 times this.
    SHORT_JOB_SECONDS: Key[float] = Key(0.002, float, 0, 0.05)
    WORKER_SYNCHRONOUS_COMMIT = Key(False, bool)  # PostgreSQL: wait for the disk
    # The alias of DATABASES that holds the queue's tables (routers.py, with QueueRouter in
    # DATABASE_ROUTERS); None: where Django's routers send the Job model.
    DATABASE: Key[str | None] = Key(
        None, str, none="where the routers send Job", words="an alias of DATABASES"
    )
    # Seconds since its enqueue a job whose name a worker does not know is given back (a
    # rolling deploy); then it is dead-lettered with JobNotRegistered. 0: dead-letter at once.
    UNKNOWN_JOB_GRACE: Key[float] = Key(600.0, float, 0, WEEK)
    # The worker's controls (docs/guide/controls.md).
    TIME_LIMIT: Key[float | None] = Key(
        None,
        float,
        0,
        WEEK,
        above=True,
        none="no limit",
        why="A week at most: a longer limit is a mistake (milliseconds written as seconds?).",
    )
    LIMITS: Key[Any] = Key({}, object, words="a dict of key -> limits")  # limits.py: E013
    # Limits per queue, an implicit key each (limits.py): E060-E064.
    QUEUES: Key[Any] = Key({}, object, words="a dict of queue -> limits")
    LIMITS_CACHE: Key[str | None] = Key(
        None, str, none="the database", words="an alias of CACHES (django-redis)"
    )
    PROGRESS_INTERVAL: Key[float] = Key(0.5, float, 0.01, 3600)
    # Periodic jobs (docs/guide/schedules.md): name -> {"job", "cron", "args", "kwargs", "queue"}.
    SCHEDULE: Key[Any] = Key({}, object, words="a dict of name -> entry")  # periodic.py: E020
    #: Context classes (``capture()``/``restore(value)``): propagation.py; E040, E041.
    CONTEXT: Key[list[str]] = Key(
        ["django_jobqueue.context.Locale", "django_jobqueue.context.TraceContext"],
        list,
        words="a list of dotted paths",
    )
    # Operations (docs/guide/operations.md).
    PRUNE_INTERVAL: Key[float] = Key(10.0, float, 0.01, DAY)
    PRUNE_BATCH = Key(1000, int, 1, 100_000)  # finished jobs deleted per statement
    # Dead letters: kept this many seconds after failing, and at most this many (oldest
    # pruned first) by the workers' pruning and ``jobqueue prune``; None: no bound.
    DEAD_LETTER_TTL: Key[int | None] = Key(None, int, 0, 10 * 366 * DAY, none="kept until deleted")
    DEAD_LETTER_MAX: Key[int | None] = Key(None, int, 0, INT32, none="no cap")
    METRICS = Key(True, bool)  # Prometheus metrics when prometheus-client is installed
    TRACING = Key(True, bool)  # OpenTelemetry spans when opentelemetry-api is installed
    MAX_WATCHERS = Key(10_000, int, 0, 1_000_000)  # WebSocket watchers one process serves: 4503
    MAX_WATCHERS_PER_TOKEN = Key(8, int, 1, 1_000_000)  # sockets one watch token may hold: 4429
    MAX_WATCHERS_PER_CLIENT = Key(1_000, int, 1, 1_000_000)  # one client address: 4429
    WATCHER_SEND_TIMEOUT = Key(10.0, float, 0.1, 3600)  # seconds to take one state, then 4408
    # Limits on hostile or accidental input (docs/guide/limits.md).
    MAX_DEPTH = Key(
        64,
        int,
        1,
        200,
        why="Deeper values come close to Python's recursion limit (1,000) when read back.",
    )
    MAX_ARGS_BYTES = Key(1 * MIB, int, 1024, 128 * MIB, why=_JSONB)
    MAX_RESULT_BYTES = Key(1 * MIB, int, 1024, 128 * MIB, why=_JSONB)
    MAX_ERROR_BYTES = Key(65_536, int, 1024, 16 * MIB)  # longer ones are cut
    # Tests (docs/guide/testing.md): enqueue runs the job inline once the transaction commits.
    EAGER = Key(False, bool)

    def __init__(self) -> None:
        self._merged: dict[str, Any] | None = None

    def merged(self) -> dict[str, Any]:
        """Every key's value: the project's where it can work, else the default."""
        merged = self._merged
        if merged is None:
            merged = self._merged = _merge()
        return merged

    def reset(self) -> None:
        """Forget the values read: the next access reads ``JOBQUEUE`` again."""
        self._merged = None


#: The table: every key of ``JOBQUEUE`` by name, in the order declared.
KEYS: dict[str, Key[Any]] = {
    name: value for name, value in vars(Settings).items() if isinstance(value, Key)
}
DEFAULTS: dict[str, Any] = {name: key.default for name, key in KEYS.items()}

#: ``JOBQUEUE``, as typed attributes: ``conf.settings.MAX_ATTEMPTS``.
settings = Settings()


def _merge() -> dict[str, Any]:
    user = getattr(django_settings, "JOBQUEUE", None) or {}
    if not isinstance(user, dict):
        logger.warning(
            "The JOBQUEUE setting is a %s, not a dict; using the defaults instead "
            "(manage.py check says why)",
            type(user).__name__,
        )
        user = {}
    merged = {}
    for name, key in KEYS.items():
        value = user.get(name, key.default)
        if key.fault(value) is not None:
            logger.warning(
                "JOBQUEUE[%r] is %r, which cannot work; using the default %r instead "
                "(manage.py check says why)",
                name,
                value,
                key.default,
            )
            value = key.default
        merged[name] = key.read(value)
    return merged


def get_settings() -> dict[str, Any]:
    """Every key's value by name (the same dict until the setting changes).

    Prefer the typed attributes of :data:`settings`.
    """
    return settings.merged()


def get(name: str) -> Any:
    """One key's value by name. Prefer the typed attribute: ``conf.settings.NAME``."""
    return settings.merged()[name]


def behind_transaction_pooler(database: dict[str, Any]) -> bool:
    """Whether ``database`` (a ``DATABASES`` entry) reaches PostgreSQL through a transaction
    pooler such as PgBouncer: Django's ``DISABLE_SERVER_SIDE_CURSORS``, which such a site sets,
    says so. Nothing that lives in a server session may then be used: the next transaction can
    run on another server connection, and this one's session goes to another client."""
    return str(database.get("ENGINE", "")).endswith("postgresql") and bool(
        database.get("DISABLE_SERVER_SIDE_CURSORS")
    )


def result_ttl(outcome: str) -> int:
    """Seconds a job that sets no ``result_ttl`` of its own is kept once it ended
    ``outcome`` (a finished status): ``RESULT_TTL``, or its entry for that outcome."""
    value = settings.RESULT_TTL
    return value.get(outcome, KEYS["RESULT_TTL"].default) if isinstance(value, dict) else value


def ttl_by_outcome() -> bool:
    """True when ``RESULT_TTL`` is a dict: a job that sets no ``result_ttl`` of its own is
    then kept for its outcome's time (decided when it ends)."""
    return isinstance(settings.RESULT_TTL, dict)


def heartbeat_interval() -> float:
    """Seconds between lease renewals: HEARTBEAT_INTERVAL, at most half of LEASE_SECONDS
    (a longer one lets leases expire under running jobs, which then run twice at once)."""
    lease = settings.LEASE_SECONDS
    value = settings.HEARTBEAT_INTERVAL
    return min(value, lease / 2) if value is not None else lease / 3


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("JOBQUEUE", "CHANNEL_LAYERS", "DATABASES"):
        settings.reset()
