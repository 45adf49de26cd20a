"""Numbers about the queue: jobs per queue and status, how long the oldest ready job waits,
jobs finished per minute, dead letters per queue.

Plain functions returning typed dataclasses, free of HTTP and admin concerns: the admin's
queue overview reads them, and so can a ``status`` command or a metrics exporter. Each
function is one grouped query whatever the number of queues, and none counts the whole job
table, which holds millions of finished jobs waiting to be pruned:

* active jobs (``ACTIVE``: queued, running) are counted exactly; they are few and the
  partial indexes ``djq_claim_queue`` and ``djq_lease`` hold exactly them;
* finished jobs (``FINISHED``: completed, failed, cancelled) are counted up to a cap
  (:data:`FINISHED_COUNT_CAP`),
  and :attr:`QueueCounts.capped` says when the cap was hit;
* the oldest waiting job is a ``MIN`` over queued jobs only;
* jobs finished per minute are read through the ``djq_expiry`` index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connections
from django.db.models import Count, Min, QuerySet
from django.db.models.functions import Coalesce, TruncMinute
from django.utils import timezone

from . import conf
from .base import ACTIVE, FINISHED, Status
from .models import DeadLetter, Job, WorkerHeartbeat
from .routers import queue_database, queue_databases

#: Finished jobs (completed and failed, all queues together) are counted up to this many.
FINISHED_COUNT_CAP = 100_000

#: The default window of :func:`finished_per_minute`, in minutes.
DEFAULT_WINDOW_MINUTES = 60


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Jobs of one queue by status. Statuses with no job are left out.

    ``capped``: more finished jobs exist (over all queues) than were counted, so the
    ``completed`` and ``failed`` numbers are lower bounds. Active counts are always exact.
    """

    queue: str
    counts: dict[str, int]
    capped: bool = False

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)


class Minute(NamedTuple):
    """Jobs that finished within one minute."""

    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Throughput:
    """Jobs of one queue finished per minute over ``minutes`` minutes ending at ``end``.

    ``start`` is the first minute (a whole minute); ``per_minute[i]`` is the minute
    ``start + i`` minutes.
    """

    queue: str
    start: datetime
    per_minute: tuple[Minute, ...]

    @property
    def total(self) -> int:
        return sum(completed + failed for completed, failed in self.per_minute)

    @property
    def peak(self) -> int:
        return max((completed + failed for completed, failed in self.per_minute), default=0)


def job_counts(*, cap: int = FINISHED_COUNT_CAP, using: str | None = None) -> list[QueueCounts]:
    """Jobs per queue and status, sorted by queue, in one statement.

    Queued and running jobs are counted exactly; completed and failed ones, over every queue
    together, up to ``cap`` (then :attr:`QueueCounts.capped` is True).
    """
    db = using or queue_database()
    jobs = Job.objects.using(db).order_by()
    parts: list[str] = []
    params: list[Any] = []

    def add(queryset: QuerySet[Any], wrap: str = "{}") -> None:
        sql, part_params = queryset.query.get_compiler(using=db).as_sql()
        parts.append(wrap.format(sql))
        params.extend(part_params)

    # One part per status that is not finished, counted exactly, so each matches its partial
    # index's predicate (djq_claim_queue for queued, djq_lease for running).
    for status in ACTIVE:
        add(jobs.filter(status=status).values("queue", "status").annotate(n=Count("id")))
    # Finished jobs: group at most cap + 1 of them, read in any order (a derived table: an
    # "id IN (... LIMIT)" filter would join the whole table back).
    columns = ", ".join(map(connections[db].ops.quote_name, ("queue", "status")))
    add(
        jobs.filter(status__in=FINISHED).values("queue", "status")[: cap + 1],
        # Compiled SQL and quoted names only; every value is a parameter.
        f"SELECT {columns}, COUNT(*) FROM ({{}}) finished GROUP BY {columns}",  # noqa: S608
    )
    with connections[db].cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        rows = [{"queue": q, "status": st, "n": n} for q, st, n in cursor.fetchall()]
    capped = sum(row["n"] for row in rows if row["status"] in FINISHED) > cap
    by_queue: dict[str, dict[str, int]] = {}
    for row in rows:
        by_queue.setdefault(row["queue"], {})[row["status"]] = row["n"]
    return [
        QueueCounts(queue, counts, capped=capped and any(s in counts for s in FINISHED))
        for queue, counts in sorted(by_queue.items())
    ]


def oldest_waiting(now: datetime, *, using: str | None = None) -> dict[str, datetime]:
    """Per queue, since when its oldest ready job waits: its ``run_after`` if it was delayed
    (or backed off after a failure), its enqueue time otherwise. Queues with no ready job are
    left out; a job delayed into the future is not waiting yet."""
    waiting = (
        Job.objects.db_manager(using)
        .order_by()
        .ready(now)
        .values("queue")
        .annotate(since=Min(Coalesce("run_after", "enqueued_at")))
    )
    return {row["queue"]: row["since"] for row in waiting}


def waited_seconds(since: datetime | None, now: datetime) -> float | None:
    """Seconds from ``since`` to ``now`` (never negative), or None without a ``since``."""
    return None if since is None else max(0.0, (now - since).total_seconds())


def finished_per_minute(
    now: datetime,
    *,
    minutes: int = DEFAULT_WINDOW_MINUTES,
    queues: Iterable[str] = (),
    using: str | None = None,
) -> dict[str, Throughput]:
    """Per queue, the jobs that finished in each of the last ``minutes`` minutes (the current
    minute included), split into completed and failed.

    Read through the ``djq_expiry`` index: a job finished within the window expires after
    its start (``expires_at = finished_at + result_ttl``), so only those index entries are
    visited. Jobs pruned already are not counted. ``queues`` are included even when nothing
    of theirs finished.
    """
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    buckets: dict[str, list[Minute]] = {queue: [Minute(0, 0)] * minutes for queue in queues}
    finished = (
        Job.objects.db_manager(using)
        .order_by()
        .filter(status__in=FINISHED, expires_at__gte=start, finished_at__gte=start)
        .annotate(minute=TruncMinute("finished_at"))
        .values("queue", "minute", "status")
        .annotate(n=Count("id"))
    )
    for row in finished:
        index = int((row["minute"] - start).total_seconds() // 60)
        if not 0 <= index < minutes:
            continue
        series = buckets.setdefault(row["queue"], [Minute(0, 0)] * minutes)
        completed, failed = series[index]
        if row["status"] == Status.COMPLETED:
            completed += row["n"]
        else:
            failed += row["n"]
        series[index] = Minute(completed, failed)
    return {queue: Throughput(queue, start, tuple(series)) for queue, series in buckets.items()}


def dead_letter_counts(*, using: str | None = None) -> dict[str, int]:
    """Dead letters per queue (they are few: each is a job an operator must look at)."""
    letters = DeadLetter.objects.db_manager(using).order_by().values("queue")
    return {row["queue"]: row["n"] for row in letters.annotate(n=Count("id"))}


@dataclass(slots=True)
class QueueSummary:
    """Everything :func:`summary` knows about one queue (or, as its ``total``, all)."""

    queue: str
    counts: dict[str, int] = field(default_factory=dict)
    capped: bool = False
    waiting_since: datetime | None = None
    dead_letters: int = 0
    throughput: Throughput | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """Per queue and for all queues: counts, oldest waiting, dead letters, throughput."""

    now: datetime
    queues: list[QueueSummary]
    total: QueueSummary


def summary(
    now: datetime,
    *,
    queues: Iterable[str] = (),
    only: bool = False,
    minutes: int = DEFAULT_WINDOW_MINUTES,
    cap: int = FINISHED_COUNT_CAP,
    using: str | None = None,
) -> Summary:
    """The four functions above together (three job queries, one dead-letter query), per
    queue sorted by name, plus a total. ``queues`` are listed even when they are empty;
    ``only``: no other queue is listed or counted in the total."""
    queues = list(queues)
    rows: dict[str, QueueSummary] = {queue: QueueSummary(queue) for queue in queues}

    def of(queue: str) -> QueueSummary:
        return rows.setdefault(queue, QueueSummary(queue))

    for counted in job_counts(cap=cap, using=using):
        row = of(counted.queue)
        row.counts, row.capped = dict(counted.counts), counted.capped
    for queue, since in oldest_waiting(now, using=using).items():
        of(queue).waiting_since = since
    for queue, letters in dead_letter_counts(using=using).items():
        of(queue).dead_letters = letters
    series = finished_per_minute(now, minutes=minutes, queues=list(rows), using=using)
    for queue, throughput in series.items():
        of(queue).throughput = throughput
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    empty = Throughput("", start, (Minute(0, 0),) * minutes)
    for row in rows.values():
        if row.throughput is None:
            row.throughput = Throughput(row.queue, start, empty.per_minute)
    if only:
        rows = {name: rows[name] for name in set(queues)}
    return Summary(now, [rows[name] for name in sorted(rows)], total(rows.values(), empty))


def every_database(
    now: datetime,
    *,
    queues: Iterable[str] = (),
    only: bool = False,
    minutes: int = DEFAULT_WINDOW_MINUTES,
    cap: int = FINISHED_COUNT_CAP,
) -> tuple[list[tuple[str, QueueSummary]], QueueSummary]:
    """:func:`summary` on each queue database (``JOBQUEUE["QUEUES"]``): ``(alias, row)``
    per queue, database by database, and the total of them all. ``queues`` are listed on
    their own database."""
    wanted = list(queues)
    rows: list[tuple[str, QueueSummary]] = []
    totals: list[QueueSummary] = []
    for alias in queue_databases():
        on = [queue for queue in wanted if queue_database(queue) == alias]
        found = summary(now, queues=on, only=only, minutes=minutes, cap=cap, using=alias)
        rows.extend((alias, row) for row in found.queues)
        totals.append(found.total)
    if len(totals) == 1:
        return rows, totals[0]
    assert totals[0].throughput is not None
    start = totals[0].throughput.start
    empty = Throughput("", start, (Minute(0, 0),) * len(totals[0].throughput.per_minute))
    return rows, total(totals, empty)


def total(rows: Iterable[QueueSummary], empty: Throughput) -> QueueSummary:
    total = QueueSummary("All queues", throughput=empty)
    per_minute = list(empty.per_minute)
    for row in rows:
        for status, n in row.counts.items():
            total.counts[status] = total.counts.get(status, 0) + n
        total.capped = total.capped or row.capped
        total.dead_letters += row.dead_letters
        if row.waiting_since is not None and (
            total.waiting_since is None or row.waiting_since < total.waiting_since
        ):
            total.waiting_since = row.waiting_since
        if row.throughput is not None:
            per_minute = [
                Minute(a + c, b + d)
                for (a, b), (c, d) in zip(per_minute, row.throughput.per_minute, strict=True)
            ]
    total.throughput = Throughput(total.queue, empty.start, tuple(per_minute))
    return total


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A running worker, from its heartbeat row (``runjobworker`` writes it every
    ``HEARTBEAT_INTERVAL``). ``queues`` is None for a worker that serves every queue."""

    name: str
    host: str
    pid: int
    queues: list[str] | None
    concurrency: int
    scheduling: bool
    started_at: datetime
    last_seen: datetime
    jobs_running: int
    jobs_done: int


def live_workers(*, using: str | None = None, now: datetime | None = None) -> list[LiveWorker]:
    """The workers seen within the last ``LEASE_SECONDS``, by name (one query).

    A worker that exits cleanly deletes its row; one that dies stops refreshing it and is
    left out here at once, then deleted by a live worker's heartbeat."""
    now = now or timezone.now()
    using = using or queue_database()
    horizon = now - timedelta(seconds=conf.settings.LEASE_SECONDS)
    rows = WorkerHeartbeat.objects.using(using).seen_since(horizon).order_by("name")
    return [
        LiveWorker(
            name=row.name,
            host=row.host,
            pid=row.pid,
            queues=row.queues,
            concurrency=row.concurrency,
            scheduling=row.scheduling,
            started_at=row.started_at,
            last_seen=row.last_seen,
            jobs_running=row.jobs_running,
            jobs_done=row.jobs_done,
        )
        for row in rows
    ]
