"""Cron expressions (read by croniter) as instants: the ticks of a schedule in a time zone.

A cron expression names wall-clock times in ``settings.TIME_ZONE``; a tick is the instant
(an aware UTC datetime) at which such a time is reached. Daylight-saving changes:

* **Spring forward** (a skipped hour, e.g. 02:00-03:00 in Europe/Paris on the last Sunday
  of March): a wall-clock time that does not exist that day is reached when the clock jumps
  over it, so its tick is the instant of the change (03:00 CEST). ``30 2 * * *`` runs at
  03:00 that day; ``*/15 * * * *`` runs once at 03:00 for 02:00, 02:15, 02:30, 02:45 and
  03:00 together (one instant, one tick), then at 03:15.
* **Fall back** (a repeated hour, e.g. 02:00-03:00 in Europe/Paris on the last Sunday of
  October): a wall-clock time that occurs twice ticks once, at its first occurrence
  (summer time). ``30 2 * * *`` runs once that night; ``*/15 * * * *`` runs at 02:00,
  02:15, 02:30 and 02:45 summer time, not during the second pass, and again at 03:00.

Ticks are therefore increasing instants and no tick is ever run twice. Five fields are
minute, hour, day of month, month, day of week; croniter's sixth field is seconds
(``* * * * * */10``: every 10 seconds), a seventh is the year; ``@daily``-style aliases work
too. croniter's random ``R`` fields are refused: croniter draws them again each time it reads
the expression, so every worker and every pass would pick another time (a schedule read
each second ran 24 times in 3 hours instead of 3). An expression that can never run (the
30th of February, a year that is past or more than croniter's 50-year search ahead) is
refused too; one whose last tick has passed since (its year is over) makes
:func:`next_tick` raise :class:`NoTick`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from croniter import croniter

# croniter (and dateutil under it) is imported where an expression is read, not with this
# module: a process with no schedule (most workers, every web process) never loads it.

__all__ = ["CronError", "NoTick", "check_cron", "latest_tick", "next_tick", "tick_label"]

_MICRO = timedelta(microseconds=1)
#: Bound on the ticks stepped over around a repeated hour (a seconds schedule has 3,600).
_STEPS = 10_000


#: A field item that is croniter's random ``R`` (``R``, ``R(0-29)``): no month or day name
#: starts with an R.
_RANDOM = re.compile(r"(^|,)\s*R", re.IGNORECASE)


class CronError(ValueError):
    """A cron expression croniter cannot read, or that the scheduler cannot run."""


class NoTick(CronError):
    """No tick where one was looked for: before a schedule's first, after its last."""


def check_cron(value: Any, now: datetime | None = None, *, ran_is_enough: bool = False) -> str:
    """``value`` if it is a cron expression the scheduler can run: croniter reads it, it has
    no random ``R`` field and it has a tick after ``now`` (default: now); :class:`CronError`
    otherwise. ``ran_is_enough``: a tick before ``now`` will do (``@job(schedule=...)``, read
    at import: a module must not stop importing because a year is over; the system check
    and the worker's start refuse it)."""
    if not isinstance(value, str) or not value.strip():
        raise CronError(f"a cron expression is a non-empty str like '*/15 * * * *', not {value!r}")
    from croniter import CroniterError, croniter

    try:
        croniter(value)
    except (CroniterError, ValueError, KeyError, TypeError) as exc:
        raise CronError(f"{value!r} is not a valid cron expression: {exc}") from None
    if any(_RANDOM.search(field) for field in value.split()):
        raise CronError(
            f"{value!r} has a random field (croniter's 'R'), which croniter draws again each "
            "time it reads the expression: each worker and each pass would pick another "
            "time, so the job would run far more often than once per period. Write the "
            "time out (e.g. '17 3 * * *' for once a day at 03:17)"
        )
    start = now or datetime.now(UTC)
    try:
        next_tick(value, start, UTC)
    except NoTick:
        try:
            last = latest_tick(value, start, UTC)
        except NoTick:
            raise CronError(
                f"{value!r} never runs: croniter finds no time it names (a day that does not "
                "exist, such as February 30 or April 31, or a year more than 50 years ahead)"
            ) from None
        if not ran_is_enough:
            raise CronError(
                f"{value!r} runs no more: the last time it names, {tick_label(last)}, has "
                "passed (its year is over); remove the schedule or give it a later year"
            ) from None
    return value


def _step(expression: str, iterator: croniter, forward: bool) -> datetime:
    """The next (or previous) wall-clock time of ``iterator``; :class:`NoTick` if none."""
    from croniter import CroniterBadDateError

    try:
        found = iterator.get_next(datetime) if forward else iterator.get_prev(datetime)
    except CroniterBadDateError:
        which = "next" if forward else "previous"
        raise NoTick(f"{expression!r} names no {which} time (croniter finds none)") from None
    assert isinstance(found, datetime)
    return found


def _wall(instant: datetime, zone: tzinfo) -> tuple[datetime, bool]:
    """The naive wall-clock time of ``instant`` in ``zone``, and whether it is the second
    occurrence of a repeated wall-clock time."""
    local = instant.astimezone(zone)
    return local.replace(tzinfo=None, fold=0), bool(local.fold)


def _instant(wall: datetime, zone: tzinfo) -> datetime:
    """The tick of a naive wall-clock time: its first occurrence, or for a time skipped by a
    daylight-saving change, the instant of the change."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    early, late = first.astimezone(UTC), second.astimezone(UTC)
    if early <= late:  # unambiguous (equal) or repeated (early is the first occurrence)
        return early
    # Skipped: fold=0 reads it with the old offset (after the change), fold=1 with the new
    # one (before it); the change happened at the instant where both readings meet.
    gap_start = late  # the wall time read with the new offset lies before the change
    return _change_between(gap_start, early, zone)


def _change_between(start: datetime, end: datetime, zone: tzinfo) -> datetime:
    """The first instant in ``(start, end]`` whose UTC offset in ``zone`` differs from
    ``start``'s (offsets change on whole seconds, so a bisection to a second is exact)."""
    offset = start.astimezone(zone).utcoffset()
    low, high = start, end
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def latest_tick(expression: str, now: datetime, zone: tzinfo) -> datetime:
    """The last tick at or before ``now`` (aware), as an aware UTC datetime;
    :class:`NoTick` if the schedule has none yet (its first is still to come)."""
    wall, second_pass = _wall(now, zone)
    if second_pass:
        # During the second pass of a repeated hour, the repeated times already ticked at
        # their first occurrence: start from the end of the repeated hour and step back.
        offset = now.astimezone(zone).replace(fold=0).utcoffset()
        later = now.astimezone(zone).utcoffset()
        assert offset is not None and later is not None
        wall += offset - later
    from croniter import croniter

    iterator = croniter(expression, wall + _MICRO)
    for _ in range(_STEPS):
        tick = _instant(_step(expression, iterator, forward=False), zone)
        if tick <= now:
            return tick
    raise CronError(f"{expression!r}: no tick found before {now.isoformat()}")  # pragma: no cover


def next_tick(expression: str, after: datetime, zone: tzinfo) -> datetime:
    """The first tick strictly after ``after`` (aware), as an aware UTC datetime;
    :class:`NoTick` if there is none (the schedule's last tick has passed)."""
    wall, _ = _wall(after, zone)
    from croniter import croniter

    iterator = croniter(expression, wall)
    for _ in range(_STEPS):
        tick = _instant(_step(expression, iterator, forward=True), zone)
        if tick > after:
            return tick
    raise CronError(f"{expression!r}: no tick found after {after.isoformat()}")  # pragma: no cover


def ticks_between(expression: str, start: datetime, end: datetime, zone: tzinfo, limit: int) -> int:
    """How many ticks fall in ``(start, end)``, counting at most ``limit``."""
    count = 0
    try:
        tick = next_tick(expression, start, zone)
        while tick < end and count < limit:
            count += 1
            tick = next_tick(expression, tick, zone)
    except NoTick:  # the schedule's last tick came before ``end``
        pass
    return count


def tick_label(tick: datetime) -> str:
    """A tick in UTC, ISO 8601, to the second: ``2026-12-01T03:00:00Z``."""
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
