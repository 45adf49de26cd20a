"""Periodic jobs: ``@job(schedule=...)`` and ``JOBQUEUE["SCHEDULE"]``, enqueued by workers.

No beat process: every running worker (unless started with ``--no-schedule``) computes, on
a timer, the latest due tick of each schedule and enqueues it with the job id
``schedule:<name>:<tick in UTC, ISO 8601>`` through the normal producer path.

Each tick runs once however many workers race for it, and however long ago its job's
result expired: the :class:`~django_jobqueue.models.Schedule` row is the guard. A worker
enqueues a tick only if, in one transaction, it moves the row's ``last_tick`` forward to
that tick (:meth:`~django_jobqueue.querysets.ScheduleQuerySet.claim_tick`); a tick at or
before ``last_tick`` is never enqueued again, even after its job row was pruned. The job id
is a second guard (an existing job of that id is not run twice, see the dedup table).

Ticks missed while no worker ran: only the latest is enqueued (once), the older ones are
skipped and a warning says how many. A schedule counts ticks from the moment it is first
seen (``since``): adding ``0 3 * * *`` at noon runs it first at 03:00 the next day, not at
once. Daylight-saving changes: see :mod:`django_jobqueue.cron`.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, transaction
from django.utils import timezone

from . import clock, conf
from .cron import CronError, NoTick, check_cron, latest_tick, next_tick, tick_label, ticks_between
from .exceptions import InvalidJobError, SerializationError
from .handles import JobHandle, announce
from .models import Schedule
from .options import check_job_id, check_queue
from .producing import insert_jobs, new_job_id
from .registry import registry
from .routers import queue_database

logger = logging.getLogger("django_jobqueue.schedule")

#: The keys of an entry of ``JOBQUEUE["SCHEDULE"]``; "job" and "cron" are required.
ENTRY_KEYS = ("job", "cron", "args", "kwargs", "queue")
#: Missed ticks are counted (for the log) up to this many.
MISSED_COUNT_CAP = 1000
#: A scheduling worker looks at the schedule rows at least this often (seconds), so a
#: resumed schedule or a changed clock is noticed without waiting for a far tick.
CHECK_EVERY_MAX = 60.0
_SAMPLE_TICK = "2000-01-01T00:00:00Z"


@dataclass(frozen=True)
class ScheduleSpec:
    """One configured schedule: from ``@job(schedule=...)`` (``source="@job"``, named after
    the job, no arguments) or an entry of ``JOBQUEUE["SCHEDULE"]``."""

    name: str
    job: str
    cron: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    source: str = "JOBQUEUE['SCHEDULE']"

    def job_id(self, tick: datetime) -> str:
        """The id of the job of ``tick``: ``schedule:<name>:<tick in UTC>``."""
        return f"schedule:{self.name}:{tick_label(tick)}"

    def manual_job_id(self, now: datetime) -> str:
        """A distinct id for an extra run ("run now" in the admin)."""
        return f"schedule:{self.name}:manual:{tick_label(now)}:{new_job_id()[:8]}"


class Problem(NamedTuple):
    """A schedule that cannot work: the system check id, the message, a hint, and the
    schedule's name when it has one (the admin shows the problem on its row)."""

    id: str
    message: str
    hint: str
    name: str | None = None


def _aware(value: datetime) -> datetime:
    """``value`` as an aware datetime (a naive one, with ``USE_TZ = False``, is local time)."""
    return timezone.make_aware(value) if timezone.is_naive(value) else value


def _stored(value: datetime) -> datetime:
    """``value`` as the database takes it: naive local time with ``USE_TZ = False``."""
    return value if settings.USE_TZ else timezone.make_naive(value)


def zone() -> tzinfo:
    """The time zone cron expressions are read in: ``settings.TIME_ZONE``."""
    return timezone.get_default_timezone()


def inspect_schedules() -> tuple[list[ScheduleSpec], list[Problem]]:
    """Every configured schedule that can work, and what is wrong with the others."""
    specs: list[ScheduleSpec] = []
    problems: list[Problem] = []
    for name in registry.names():
        schedule = registry.get(name).schedule
        if schedule is None:
            continue
        try:
            check_cron(schedule)  # checked when decorated, but a year may be over since
        except CronError as exc:
            problems.append(_cron_problem(f"@job(schedule=...) of {name}", exc, name))
            continue
        specs.append(ScheduleSpec(name, name, schedule, source="@job"))
    taken = {spec.name for spec in specs}
    setting = conf.settings.SCHEDULE
    if setting is None:
        setting = {}
    if not isinstance(setting, dict):
        problems.append(
            Problem(
                "django_jobqueue.E020",
                f"JOBQUEUE['SCHEDULE'] must be a dict of name -> entry, not {setting!r}.",
                "JOBQUEUE['SCHEDULE'] = {'nightly-report': {'job': 'reports.jobs.build', "
                "'cron': '0 3 * * *'}}",
            )
        )
        return specs, problems
    for name, entry in setting.items():
        spec, found = _entry(name, entry, taken)
        problems.extend(problem._replace(name=name) for problem in found)
        if spec is not None and not found:
            specs.append(spec)
            taken.add(spec.name)
    return specs, problems


def configured() -> list[ScheduleSpec]:
    """Every configured schedule; ``ImproperlyConfigured`` listing each problem if any."""
    specs, problems = inspect_schedules()
    if problems:
        lines = "\n".join(f"- ({p.id}) {p.message} HINT: {p.hint}" for p in problems)
        raise ImproperlyConfigured(f"Periodic jobs cannot be scheduled:\n{lines}")
    return specs


def _entry(  # noqa: C901 - one check per documented key of an entry, in order
    name: Any, entry: Any, taken: set[str]
) -> tuple[ScheduleSpec | None, list[Problem]]:
    where = f"JOBQUEUE['SCHEDULE'][{name!r}]"
    example = "{'job': 'myapp.jobs.build', 'cron': '0 3 * * *', 'kwargs': {...}}"
    if not isinstance(name, str) or not name or len(name) > 150:
        return None, [_malformed(f"{where}: a schedule name is a str of 1 to 150 characters.")]
    try:
        check_job_id(f"schedule:{name}:{_SAMPLE_TICK}")
    except InvalidJobError as exc:
        return None, [_malformed(f"{where}: the name cannot be part of a job id: {exc}")]
    if name in taken:
        return None, [
            _malformed(
                f"{where}: the name is taken by @job(schedule=...) of the job {name!r}.",
                "Give the entry another name.",
            )
        ]
    if not isinstance(entry, dict):
        return None, [_malformed(f"{where} must be a dict like {example}, not {entry!r}.")]
    problems = []
    for key in sorted(set(entry) - set(ENTRY_KEYS), key=str):
        close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        problems.append(
            _malformed(
                f"{where} has an unknown key {key!r}.",
                f"{guess}Valid keys: {', '.join(ENTRY_KEYS)}.",
            )
        )
    for key in ("job", "cron"):
        if key not in entry:
            problems.append(_malformed(f"{where} has no {key!r}.", f"For example {example}."))
    if problems:
        return None, problems
    job_name, cron = entry["job"], entry["cron"]
    args = entry.get("args", [])
    kwargs = entry.get("kwargs", {})
    queue = entry.get("queue")
    try:
        check_cron(cron)
    except CronError as exc:
        problems.append(_cron_problem(f"{where}['cron']", exc))
    if not isinstance(args, list | tuple):
        problems.append(_malformed(f"{where}['args'] must be a list, not {args!r}."))
    if not isinstance(kwargs, dict):
        problems.append(_malformed(f"{where}['kwargs'] must be a dict, not {kwargs!r}."))
    if queue is not None:
        try:
            check_queue(queue)
        except InvalidJobError as exc:
            problems.append(_malformed(f"{where}['queue']: {exc}"))
    if not isinstance(job_name, str) or job_name not in registry:
        close = difflib.get_close_matches(str(job_name), registry.names(), n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        problems.append(
            Problem(
                "django_jobqueue.E022",
                f"{where}['job'] is {job_name!r}, which is not a registered job.",
                f"{guess}Jobs are registered by @job in the jobs module of an installed app "
                "(myapp/jobs.py); the name is '<module>.<function>' unless @job(name=...).",
            )
        )
    if problems:
        return None, problems
    spec = ScheduleSpec(name, job_name, cron, list(args), dict(kwargs), queue)
    try:
        _new_job(spec, spec.job_id(timezone.now()), timezone.now())
    except (InvalidJobError, SerializationError) as exc:
        return None, [
            Problem(
                "django_jobqueue.E023",
                f"{where}: the job cannot be enqueued with these arguments: {exc}",
                "Give 'args' and 'kwargs' that fit the job's signature, as JSON values.",
            )
        ]
    return spec, []


def _cron_problem(where: str, exc: CronError, name: str | None = None) -> Problem:
    return Problem(
        "django_jobqueue.E021",
        f"{where}: {exc}.",
        "Five fields (minute hour day-of-month month day-of-week), e.g. '*/15 * * * *'; a "
        "sixth field is seconds, a seventh the year, as croniter reads them. It must name a "
        "time to come, and no random 'R' field.",
        name,
    )


def _malformed(message: str, hint: str = "See docs/guide/schedules.md.") -> Problem:
    return Problem("django_jobqueue.E020", message, hint)


# -- the rows -----------------------------------------------------------------------------


def sync(specs: Sequence[ScheduleSpec], *, using: str | None = None) -> None:
    """Make sure each schedule has its row, with its current job and cron expression; a
    new schedule, or one whose cron expression changed, counts ticks from now on."""
    if not specs:
        return
    using = using or queue_database()
    rows = Schedule.objects.using(using)
    now = clock.now()
    existing = {
        name: (job, cron)
        for name, job, cron in rows.filter(name__in=[s.name for s in specs]).values_list(
            "name", "job", "cron"
        )
    }
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        rows.bulk_create(
            [Schedule(name=s.name, job=s.job, cron=s.cron, since=now) for s in missing],
            ignore_conflicts=True,
        )
    for spec in specs:
        known = existing.get(spec.name)
        if known is None or known == (spec.job, spec.cron):
            continue
        changes: dict[str, Any] = {"job": spec.job, "cron": spec.cron}
        if known[1] != spec.cron:
            changes["since"] = now
            logger.info(
                "schedule %s: cron changed to %r; ticks count from now", spec.name, spec.cron
            )
        rows.filter(name=spec.name).update(**changes)


def _new_job(spec: ScheduleSpec, job_id: str, now: datetime) -> Any:
    job = registry.get(spec.job)
    if spec.queue is not None:
        job = job.using(queue=spec.queue)
    return job.new_job(spec.args, spec.kwargs, job_id=job_id, now=now)


def enqueue_tick(
    spec: ScheduleSpec, tick: datetime, now: datetime, *, using: str | None = None
) -> JobHandle | None:
    """Enqueue ``spec``'s job for ``tick`` if no one has (and the schedule is not paused);
    its handle, or None when the tick was not ours to enqueue."""
    using = using or queue_database()
    row = (
        Schedule.objects.using(using)
        .filter(name=spec.name)
        .values("paused", "since", "last_tick")
        .first()
    )
    if row is None:
        sync([spec], using=using)  # deleted in the admin meanwhile: it counts from now
        return None
    tick, now = _aware(tick), _aware(now)
    last = _aware(row["last_tick"]) if row["last_tick"] is not None else None
    since = _aware(row["since"])
    if row["paused"] or since >= tick or (last is not None and last >= tick):
        return None
    job_id = spec.job_id(tick)
    new = _new_job(spec, job_id, _stored(now))
    with transaction.atomic(using=using):
        claimed = Schedule.objects.using(using).claim_tick(
            spec.name, _stored(tick), job_id, _stored(now)
        )
        if not claimed:
            return None
        snapshots = insert_jobs([new])
    (handle,) = announce(snapshots, using=using)
    start = last if last is not None and last > since else since
    missed = ticks_between(spec.cron, start, tick, zone(), MISSED_COUNT_CAP)
    if missed:
        logger.warning(
            "schedule %s: %s%d missed tick(s) between %s and %s skipped (no worker was "
            "scheduling); enqueued the latest only, id=%s",
            spec.name,
            "at least " if missed >= MISSED_COUNT_CAP else "",
            missed,
            tick_label(start),
            tick_label(tick),
            job_id,
        )
    logger.info("schedule %s: tick %s enqueued id=%s", spec.name, tick_label(tick), job_id)
    return handle


class Scheduler:
    """A worker's part in scheduling: :meth:`run` on its timer enqueues what is due and
    says when to come back. Holds the last tick it handled per schedule, so a worker makes
    no statement for a tick it has already looked at."""

    def __init__(self, specs: Sequence[ScheduleSpec], using: str) -> None:
        self.specs = list(specs)
        self.using = using
        self.handled: dict[str, datetime] = {}
        #: The schedules whose last pass failed, with the error (logged once).
        self.failing: dict[str, str] = {}
        self.synced = False

    def run(self, now: datetime | None = None) -> float:
        """Enqueue each schedule's latest due tick not yet handled; seconds until the next.

        A schedule that fails (its last tick passed, its job no longer takes its arguments)
        is logged once and skipped: it never stops the others. A database error is raised
        (the worker's connection handling retries the pass)."""
        now = _aware(now or clock.now())  # ticks on the database's clock, not this host's
        if not self.synced:
            sync(self.specs, using=self.using)
            self.synced = True
        tz = zone()
        wait = CHECK_EVERY_MAX
        for spec in self.specs:
            try:
                wait = min(wait, self._run_one(spec, now, tz))
            except DatabaseError:
                raise
            except Exception as exc:  # one schedule that cannot run must not stop the others
                self._failed(spec, exc)
            else:
                self.failing.pop(spec.name, None)
        return max(0.0, wait) + 0.001

    def _run_one(self, spec: ScheduleSpec, now: datetime, tz: tzinfo) -> float:
        """Enqueue ``spec``'s latest tick if due; the seconds until its next tick."""
        try:
            tick: datetime | None = latest_tick(spec.cron, now, tz)
        except NoTick:
            tick = None  # its first tick is still to come (a year ahead, for one)
        if tick is not None and self.handled.get(spec.name) != tick:
            enqueue_tick(spec, tick, now, using=self.using)
            self.handled[spec.name] = tick
        return (next_tick(spec.cron, now, tz) - now).total_seconds()

    def _failed(self, spec: ScheduleSpec, exc: Exception) -> None:
        """Log ``spec``'s failure, once while it stays the same."""
        error = f"{type(exc).__name__}: {exc}"
        if self.failing.get(spec.name) == error:
            return
        self.failing[spec.name] = error
        logger.error(
            "schedule %s: skipped, it cannot run: %s (the other schedules go on; "
            "manage.py check says what is wrong with it)",
            spec.name,
            error,
            exc_info=not isinstance(exc, CronError),
        )


# -- the admin's verbs ----------------------------------------------------------------------


def specs_by_name() -> dict[str, ScheduleSpec]:
    """The configured schedules that can work, by name."""
    return {spec.name: spec for spec in inspect_schedules()[0]}


def next_run(spec: ScheduleSpec, row: Schedule, now: datetime | None = None) -> datetime | None:
    """When ``spec`` runs next: None while paused; :class:`~.cron.NoTick` if never again."""
    if row.paused:
        return None
    after = max(
        _aware(now or timezone.now()), _aware(row.last_tick or row.since), _aware(row.since)
    )
    return next_tick(spec.cron, after, zone())


def set_paused(names: Iterable[str], paused: bool, *, using: str | None = None) -> int:
    """Pause or resume the schedules ``names`` (one statement); how many changed.

    A resumed schedule counts ticks from now: the ticks that fell while it was paused are
    not run."""
    using = using or queue_database()
    rows = Schedule.objects.using(using).filter(name__in=list(names), paused=not paused)
    if paused:
        return int(rows.update(paused=True))
    return int(rows.update(paused=False, since=timezone.now()))


def run_now(spec: ScheduleSpec, *, using: str | None = None) -> JobHandle:
    """Enqueue an extra run of ``spec`` now, with an id of its own
    (``schedule:<name>:manual:<now>:<random>``); the row records it as the last job."""
    using = using or queue_database()
    now = timezone.now()
    job_id = spec.manual_job_id(_aware(now))
    new = _new_job(spec, job_id, now)
    with transaction.atomic(using=using):
        sync([spec], using=using)
        Schedule.objects.using(using).filter(name=spec.name).update(
            last_job_id=job_id, last_enqueued_at=now
        )
        snapshots = insert_jobs([new])
    (handle,) = announce(snapshots, using=using)
    logger.info("schedule %s: run now, enqueued id=%s", spec.name, job_id)
    return handle


__all__ = [
    "CHECK_EVERY_MAX",
    "Problem",
    "ScheduleSpec",
    "Scheduler",
    "configured",
    "enqueue_tick",
    "inspect_schedules",
    "next_run",
    "run_now",
    "set_paused",
    "specs_by_name",
    "sync",
    "zone",
]
