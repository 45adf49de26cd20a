"""The queue overview page: per queue, jobs by status, dead letters, how long the oldest
ready job waits, a bar chart of the jobs finished per minute over the last hour, and
whether the queue is paused (with pause and resume buttons: :mod:`.pausing`).

The status columns (headings and cells) are :class:`~django_jobqueue.base.Status`, in its
order: a status added there gets its column.

The numbers come from :mod:`django_jobqueue.stats`; this module only shapes them for the
templates (``admin/django_jobqueue/job/overview.html``, ``overview_row.html`` and
``chart.html``, which draws the SVG).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.functional import Promise

from .. import stats
from ..base import ACTIVE, FINISHED, Status
from ..models import QueuePause
from .display import STATUS_COLOURS, human_seconds, known_queues
from .pausing import can_pause, handle_post, pauses

#: Minutes of history in the overview's "finished per minute" charts.
CHART_MINUTES = 60

#: The chart's geometry, in pixels: bar width, gap between bars, height.
BAR, GAP, HEIGHT = 3, 1, 32


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle of a chart: a minute's completed (or failed, stacked on top) jobs."""

    x: int
    y: int
    height: int
    fill: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What ``chart.html`` draws: bars, the SVG's size and a caption."""

    bars: list[Bar]
    width: int
    height: int
    minutes: int
    peak: int
    bar_width: int = BAR

    @property
    def baseline(self) -> int:
        return self.height - 1


def bar_chart(throughput: stats.Throughput) -> Chart:
    """One bar per minute, completed (green) under failed (red), scaled to the peak."""
    minutes = throughput.per_minute
    peak = throughput.peak
    bars = []
    for index, (completed, failed) in enumerate(minutes):
        if not completed + failed:
            continue
        x = index * (BAR + GAP)
        minute = timezone.localtime(throughput.start + timedelta(minutes=index))
        title = f"{minute:%H:%M}: {completed} completed, {failed} failed"
        ok = max(1, round(HEIGHT * completed / peak)) if completed else 0
        bad = max(1, round(HEIGHT * failed / peak)) if failed else 0
        if ok:
            bars.append(Bar(x, HEIGHT - ok, ok, STATUS_COLOURS[Status.COMPLETED], title))
        if bad:
            bars.append(Bar(x, HEIGHT - ok - bad, bad, STATUS_COLOURS[Status.FAILED], title))
    return Chart(bars, len(minutes) * (BAR + GAP), HEIGHT, len(minutes), peak)


@dataclass(frozen=True, slots=True)
class StatusCount:
    status: str
    label: str | Promise  # translated when rendered
    count: int
    at_least: bool  # the count was capped: there are more


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One row of the overview table: a queue, or all of them."""

    summary: stats.QueueSummary
    now: datetime
    #: The queue's pause, if it is paused (its reason, who, when).
    pause: QueuePause | None = None

    @property
    def queue(self) -> str:
        return self.summary.queue

    @property
    def counts(self) -> dict[str, int]:
        return self.summary.counts

    @property
    def dead_letters(self) -> int:
        return self.summary.dead_letters

    @property
    def waiting_since(self) -> datetime | None:
        return self.summary.waiting_since

    @property
    def status_counts(self) -> list[StatusCount]:
        capped = self.summary.capped
        return [
            StatusCount(value, label, self.counts.get(value, 0), capped and value in FINISHED)
            for value, label in Status.choices
        ]

    @property
    def oldest_waiting(self) -> str:
        return human_seconds(stats.waited_seconds(self.waiting_since, self.now))

    @property
    def throughput(self) -> stats.Throughput:
        assert self.summary.throughput is not None  # stats.summary() sets it on every row
        return self.summary.throughput

    @property
    def minutes(self) -> list[stats.Minute]:
        return list(self.throughput.per_minute)

    @property
    def finished_last_hour(self) -> int:
        return self.throughput.total

    @property
    def chart(self) -> Chart:
        return bar_chart(self.throughput)


#: Queue rows the overview shows at most: the busiest (waiting, running, dead letters).
OVERVIEW_QUEUES = 100


@dataclass(frozen=True, slots=True)
class Overview:
    now: datetime
    queues: list[QueueRow]
    total: QueueRow
    #: Queues left out of ``queues`` (their jobs are in the total).
    more: int = 0

    @property
    def statuses(self) -> list[tuple[str, str | Promise]]:
        """``(status, label)`` of each status column, in the order of every row's
        :attr:`QueueRow.status_counts`: both are :class:`~django_jobqueue.base.Status`."""
        return [(str(value), label) for value, label in Status.choices]


def build_overview(now: datetime) -> Overview:
    """The overview's rows: the queues with jobs or dead letters, the known ones (default
    queue, queues of registered jobs) and the paused ones even when empty, and the total."""
    paused = pauses()
    # Queues on databases of their own (JOBQUEUE["QUEUES"]) among the others.
    found, total = stats.every_database(
        now, queues=known_queues() | set(paused), minutes=CHART_MINUTES
    )
    every = sorted((row for _alias, row in found), key=lambda row: row.queue)
    shown = every
    if len(shown) > OVERVIEW_QUEUES:  # thousands of queues: a page, not megabytes

        def busy(row: stats.QueueSummary) -> int:
            counts = row.counts
            active = sum(counts.get(status, 0) for status in ACTIVE)
            return active + row.dead_letters + (10**12 if row.queue in paused else 0)

        busiest = sorted(shown, key=lambda row: (-busy(row), row.queue))[:OVERVIEW_QUEUES]
        shown = sorted(busiest, key=lambda row: row.queue)
    return Overview(
        now,
        [QueueRow(queue, now, paused.get(queue.queue)) for queue in shown],
        QueueRow(total, now),
        more=len(every) - len(shown),
    )


def overview_page(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """The overview, for whoever may view jobs; a POST pauses or resumes a queue
    (:func:`.pausing.handle_post`: for whoever may change jobs)."""
    if request.method == "POST":
        return handle_post(model_admin, request)
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Queue overview",
        "overview": build_overview(timezone.now()),
        "chart_minutes": CHART_MINUTES,
        "can_pause": can_pause(model_admin, request),
    }
    return TemplateResponse(request, "admin/django_jobqueue/job/overview.html", context)
