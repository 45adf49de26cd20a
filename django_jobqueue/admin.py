"""The Django admin for jobs and dead letters, and a per-queue overview page.

Built for large tables: list pages select only the columns they show (no per-row queries),
never count the whole table (``show_full_result_count = False`` and a count capped at
:data:`COUNT_CAP` rows), and the job list's queue and name filters come from the registered
jobs, not from a ``SELECT DISTINCT`` over every job.

Jobs are read-only here. Dead letters can be requeued (``change`` permission) and deleted
(``delete`` permission); requeueing is :func:`django_jobqueue.deadletters.requeue`, one
transaction per click.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Min, QuerySet
from django.db.models.functions import Coalesce, TruncMinute
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from . import conf
from .deadletters import RequeueReport, requeue_report
from .models import DeadLetter, Job, Status
from .registry import registry

#: The job and dead-letter lists count at most this many matching rows; beyond it the list
#: says "more than 10,000" and pages past it are reached by narrowing the filters.
COUNT_CAP = 10_000

#: Minutes of history in the overview's "finished per minute" charts.
CHART_MINUTES = 60

STATUS_COLOURS = {
    Status.QUEUED: "#79aec8",
    Status.RUNNING: "#e6a23c",
    Status.COMPLETED: "#3a9d5d",
    Status.FAILED: "#ba2121",
}


class CappedCountPaginator(Paginator):
    """A paginator whose ``count`` reads at most ``COUNT_CAP + 1`` rows.

    ``capped`` is True when more rows match than were counted; the pagination template then
    says "more than". A plain ``COUNT(*)`` over millions of finished jobs on every page load
    is what this avoids.
    """

    cap = COUNT_CAP
    capped = False

    @cached_property
    def count(self) -> int:
        queryset: Any = self.object_list
        counted = queryset.order_by()[: self.cap + 1].count()
        self.capped = counted > self.cap
        return min(counted, self.cap)


def pretty_json(value: Any) -> SafeString:
    """``value`` as indented JSON in a ``<pre>``, escaped."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return format_html('<pre class="djq-pre">{}</pre>', text)


def pre(text: str) -> SafeString:
    if not text:
        return format_html("<span>{}</span>", "-")
    return format_html('<pre class="djq-pre">{}</pre>', text)


def status_badge(status: str) -> SafeString:
    colour = STATUS_COLOURS.get(status, "#666")  # type: ignore[call-overload]
    label = Status(status).label if status in Status.values else status
    return format_html(
        '<span class="djq-status djq-status-{}" style="color: {}; font-weight: bold">{}</span>',
        status,
        colour,
        label,
    )


def human_seconds(seconds: float | None) -> str:
    """``0.012 s``, ``4.2 s``, ``3 min 12 s``, ``2 h 5 min``, ``3 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f} s" if seconds < 1 else f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def compact_time(value: datetime | None, same_day_as: datetime | None = None) -> str:
    """``2026-11-22 07:18:03`` in the current time zone; only ``07:18:03`` when it is the same
    day as ``same_day_as`` (a job's start and finish, next to its enqueue time)."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    if same_day_as is not None and timezone.localtime(same_day_as).date() == local.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def precise_time(value: datetime | None, empty: str = "-") -> str:
    """``2026-11-22 07:18:03.120 UTC``: a job's times to the millisecond, with the zone."""
    if value is None:
        return empty
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local.tzname()}"


def _precise(field_name: str, label: str, empty: str = "-") -> Any:
    @admin.display(description=label, ordering=field_name)
    def show(self: Any, obj: Any) -> str:
        return precise_time(getattr(obj, field_name), empty)

    return show


# -- filters --------------------------------------------------------------------------------


class _RegistryFilter(admin.SimpleListFilter):
    """Choices from the registered jobs (no query), plus the value in the URL if unknown."""

    def known(self) -> set[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = sorted(self.known())
        current = self.value()
        if current and current not in values:
            values.append(current)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(**{str(self.parameter_name): value}) if value else queryset


def known_queues() -> set[str]:
    """The default queue and the queues of the registered jobs."""
    queues = {conf.get("DEFAULT_QUEUE")}
    queues.update(job.queue for job in map(registry.get, registry.names()) if job.queue)
    return queues


class QueueFilter(_RegistryFilter):
    title = "queue"
    parameter_name = "queue"

    def known(self) -> set[str]:
        return known_queues()


class NameFilter(_RegistryFilter):
    title = "name"
    parameter_name = "name"

    def known(self) -> set[str]:
        return set(registry.names())


# -- jobs -----------------------------------------------------------------------------------

JOB_LIST_FIELDS = (
    "id",
    "job_id",
    "name",
    "queue",
    "status",
    "attempts",
    "max_attempts",
    "enqueued_at",
    "started_at",
    "finished_at",
)


def _fields(fieldsets: Any) -> tuple[str, ...]:
    """Every field of ``fieldsets``: all of them are read-only."""
    return tuple(name for _title, options in fieldsets for name in options["fields"])


def _is_changelist(request: HttpRequest) -> bool:
    match = getattr(request, "resolver_match", None)
    return bool(match and match.url_name and match.url_name.endswith("_changelist"))


class SearchByJobIdMixin:
    """Search: a whole job id is one index lookup; anything else searches names as well."""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if term and " " not in term:
            by_id = queryset.filter(job_id=term)
            if by_id.exists():  # an index lookup, not "job_id = x OR name LIKE ..." (a scan)
                return by_id, False
        return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]


@admin.register(Job)
class JobAdmin(SearchByJobIdMixin, admin.ModelAdmin):
    list_display = (
        "job_id",
        "name",
        "queue",
        "status_display",
        "attempts_display",
        "enqueued",
        "started",
        "finished",
        "duration_display",
    )
    list_display_links = ("job_id",)
    list_filter = ("status", QueueFilter, NameFilter)
    search_fields = ("job_id__exact", "name")
    search_help_text = "A job id (exact) or part of a job name."
    list_select_related = False
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    ordering = ("-id",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "job_id",
                    "name",
                    "queue",
                    "status_display",
                    "attempts_display",
                    "priority",
                    "group",
                )
            },
        ),
        ("Arguments", {"fields": ("args_display", "kwargs_display")}),
        ("Outcome", {"fields": ("result_display", "error_display", "traceback_display")}),
        (
            "Timing",
            {
                "fields": (
                    "enqueued_at_display",
                    "run_after_display",
                    "started_at_display",
                    "finished_at_display",
                    "duration_display",
                    "expires_at_display",
                )
            },
        ),
        (
            "Worker",
            {
                "fields": ("worker", "lease_expires_at_display", "notify", "result_ttl"),
                "classes": ("collapse",),
            },
        ),
    )
    readonly_fields = _fields(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        queryset = super().get_queryset(request)
        if _is_changelist(request):
            return queryset.only(*JOB_LIST_FIELDS)
        return queryset.select_related("outcome")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # a job's row belongs to the queue; look, requeue dead letters, delete

    # -- columns and fields ------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_display(self, job: Job) -> SafeString:
        return status_badge(job.status)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts} / {job.max_attempts}"

    enqueued_at_display = _precise("enqueued_at", "enqueued at")
    run_after_display = _precise("run_after", "run after", "- (at once)")
    started_at_display = _precise("started_at", "started at")
    finished_at_display = _precise("finished_at", "finished at")
    expires_at_display = _precise("expires_at", "outcome kept until")
    lease_expires_at_display = _precise("lease_expires_at", "lease expires at")

    @admin.display(description="enqueued", ordering="enqueued_at")
    def enqueued(self, job: Job) -> str:
        return compact_time(job.enqueued_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, job: Job) -> str:
        return compact_time(job.started_at, job.enqueued_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, job: Job) -> str:
        return compact_time(job.finished_at, job.enqueued_at)

    @admin.display(description="duration")
    def duration_display(self, job: Job) -> str:
        return human_seconds(job.duration)

    @admin.display(description="args")
    def args_display(self, job: Job) -> SafeString:
        return pretty_json(job.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, job: Job) -> SafeString:
        return pretty_json(job.kwargs)

    @admin.display(description="result")
    def result_display(self, job: Job) -> SafeString | str:
        if job.status != Status.COMPLETED:
            return "-"
        outcome = getattr(job, "outcome", None)
        return pretty_json(outcome.result if outcome is not None else None)

    @admin.display(description="error")
    def error_display(self, job: Job) -> SafeString:
        outcome = getattr(job, "outcome", None) if job.status == Status.FAILED else None
        error = (outcome.error if outcome is not None else "") or job.last_error
        if not error:
            return pre("")
        note = "" if job.status == Status.FAILED else " (the last failed attempt; it will retry)"
        letter = None
        if job.status == Status.FAILED:
            letter = DeadLetter.objects.filter(job_id=job.job_id).only("pk").first()
        link = (
            format_html(
                '<p><a href="{}">The dead letter of this job</a></p>',
                reverse("admin:django_jobqueue_deadletter_change", args=[letter.pk]),
            )
            if letter is not None
            else ""
        )
        return format_html("{}{}{}", pre(error), note, link)

    @admin.display(description="traceback")
    def traceback_display(self, job: Job) -> SafeString:
        outcome = getattr(job, "outcome", None) if job.status == Status.FAILED else None
        return pre(outcome.traceback if outcome is not None else "")

    # -- the overview page --------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="django_jobqueue_job_overview",
        )
        return [overview, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Queue overview",
            "overview": build_overview(timezone.now()),
            "chart_minutes": CHART_MINUTES,
        }
        return TemplateResponse(request, "admin/django_jobqueue/job/overview.html", context)


# -- the overview ---------------------------------------------------------------------------


@dataclass
class QueueStats:
    queue: str
    counts: dict[str, int] = field(default_factory=dict)
    waiting_since: datetime | None = None
    dead_letters: int = 0
    minutes: list[tuple[int, int]] = field(default_factory=list)  # (completed, failed)
    now: datetime | None = None

    @property
    def status_counts(self) -> list[tuple[str, str, int]]:
        return [(value, label, self.counts.get(value, 0)) for value, label in Status.choices]

    @property
    def oldest_waiting(self) -> str:
        if self.waiting_since is None or self.now is None:
            return "-"
        return human_seconds(max(0.0, (self.now - self.waiting_since).total_seconds()))

    @property
    def finished_last_hour(self) -> int:
        return sum(completed + failed for completed, failed in self.minutes)

    @property
    def chart(self) -> SafeString:
        return bar_chart(self.minutes, self.now)


@dataclass
class Overview:
    queues: list[QueueStats]
    total: QueueStats


def build_overview(now: datetime) -> Overview:
    """Per-queue numbers for the overview page, in four grouped queries.

    1. counts by ``(queue, status)``; 2. per queue, since when the oldest ready job waits
    (its ``run_after``, or its enqueue time); 3. dead letters per queue; 4. finished jobs per
    ``(queue, minute, status)`` over the last hour. The last one reads only finished jobs
    through the ``djq_expiry`` index: a job finished within the hour expires after
    ``since`` (``expires_at = finished_at + result_ttl``), so jobs pruned earlier are not
    in the chart.
    """
    stats: dict[str, QueueStats] = {}

    def of(queue: str) -> QueueStats:
        if queue not in stats:
            stats[queue] = QueueStats(queue, now=now, minutes=[(0, 0)] * CHART_MINUTES)
        return stats[queue]

    for name in known_queues():
        of(name)
    jobs = Job.objects.order_by()
    for counted in jobs.values("queue", "status").annotate(n=Count("id")):
        of(counted["queue"]).counts[counted["status"]] = counted["n"]
    waiting = (
        jobs.ready(now).values("queue").annotate(since=Min(Coalesce("run_after", "enqueued_at")))
    )
    for oldest in waiting:
        of(oldest["queue"]).waiting_since = oldest["since"]
    for letters in DeadLetter.objects.order_by().values("queue").annotate(n=Count("id")):
        of(letters["queue"]).dead_letters = letters["n"]

    first_minute = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    finished = (
        jobs.filter(
            status__in=[Status.COMPLETED, Status.FAILED],
            expires_at__gte=first_minute,
            finished_at__gte=first_minute,
        )
        .annotate(minute=TruncMinute("finished_at"))
        .values("queue", "minute", "status")
        .annotate(n=Count("id"))
    )
    for bucket in finished:
        index = int((bucket["minute"] - first_minute).total_seconds() // 60)
        if not 0 <= index < CHART_MINUTES:
            continue
        stat = of(bucket["queue"])
        completed, failed = stat.minutes[index]
        if bucket["status"] == Status.COMPLETED:
            completed += bucket["n"]
        else:
            failed += bucket["n"]
        stat.minutes[index] = (completed, failed)

    total = QueueStats("All queues", now=now, minutes=[(0, 0)] * CHART_MINUTES)
    for stat in stats.values():
        for status, n in stat.counts.items():
            total.counts[status] = total.counts.get(status, 0) + n
        total.dead_letters += stat.dead_letters
        if stat.waiting_since is not None and (
            total.waiting_since is None or stat.waiting_since < total.waiting_since
        ):
            total.waiting_since = stat.waiting_since
        total.minutes = [
            (a + c, b + d) for (a, b), (c, d) in zip(total.minutes, stat.minutes, strict=True)
        ]
    return Overview(queues=[stats[name] for name in sorted(stats)], total=total)


def bar_chart(minutes: list[tuple[int, int]], now: datetime | None) -> SafeString:
    """An inline SVG bar chart: one bar per minute, completed (green) under failed (red)."""
    bar, gap, height = 3, 1, 32
    width = len(minutes) * (bar + gap)
    peak = max((completed + failed for completed, failed in minutes), default=0)
    start = (now or timezone.now()).replace(second=0, microsecond=0) - timedelta(
        minutes=len(minutes) - 1
    )
    shapes = []
    for index, (completed, failed) in enumerate(minutes):
        if not completed + failed:
            continue
        x = index * (bar + gap)
        minute = timezone.localtime(start + timedelta(minutes=index)).strftime("%H:%M")
        ok_h = max(1, round(height * completed / peak)) if completed else 0
        bad_h = max(1, round(height * failed / peak)) if failed else 0
        tip = f"{minute}: {completed} completed, {failed} failed"
        if ok_h:
            shapes.append((x, height - ok_h, ok_h, STATUS_COLOURS[Status.COMPLETED], tip))
        if bad_h:
            shapes.append((x, height - ok_h - bad_h, bad_h, STATUS_COLOURS[Status.FAILED], tip))
    rects = format_html_join(
        "",
        '<rect x="{}" y="{}" width="'
        + str(bar)
        + '" height="{}" fill="{}"><title>{}</title></rect>',
        shapes,
    )
    label = f"peak {peak}/min" if peak else "nothing finished"
    return format_html(
        '<svg class="djq-chart" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="jobs finished per minute, last {} minutes">'
        '<rect x="0" y="{}" width="{}" height="1" fill="#ccc"></rect>{}</svg>'
        '<br><span class="djq-peak">{}</span>',
        width,
        height,
        width,
        height,
        len(minutes),
        height - 1,
        width,
        rects,
        label,
    )


# -- dead letters ---------------------------------------------------------------------------

DEAD_LETTER_LIST_FIELDS = ("id", "job_id", "name", "error", "attempts", "failed_at")


@admin.register(DeadLetter)
class DeadLetterAdmin(SearchByJobIdMixin, admin.ModelAdmin):
    list_display = ("job_id", "name", "error_line", "attempts", "failed")
    list_display_links = ("job_id",)
    list_filter = ("queue", "name")
    search_fields = ("job_id__exact", "name")
    search_help_text = "A job id (exact) or part of a job name."
    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    actions = ("requeue_selected", "delete_selected")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "job_id",
                    "job_link",
                    "name",
                    "queue",
                    "attempts_display",
                    "priority",
                    "group",
                    "result_ttl",
                    "enqueued_at_display",
                    "failed_at_display",
                )
            },
        ),
        ("Arguments", {"fields": ("args_display", "kwargs_display")}),
        ("Failure", {"fields": ("error_display", "traceback_display")}),
    )
    readonly_fields = _fields(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        queryset = super().get_queryset(request)
        if _is_changelist(request):
            return queryset.only(*DEAD_LETTER_LIST_FIELDS)
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return False  # read-only; "change" permission is what requeueing needs

    def has_requeue_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return request.user.has_perm("django_jobqueue.change_deadletter")

    # -- columns and fields ------------------------------------------------------------------

    @admin.display(description="error")
    def error_line(self, letter: DeadLetter) -> str:
        return Truncator(letter.error_summary).chars(120)

    enqueued_at_display = _precise("enqueued_at", "enqueued at")
    failed_at_display = _precise("failed_at", "failed at")

    @admin.display(description="failed", ordering="failed_at")
    def failed(self, letter: DeadLetter) -> str:
        return compact_time(letter.failed_at)

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, letter: DeadLetter) -> str:
        return f"{letter.attempts} / {letter.max_attempts}"

    @admin.display(description="job now")
    def job_link(self, letter: DeadLetter) -> SafeString | str:
        job = Job.objects.filter(job_id=letter.job_id).only("id", "status").first()
        if job is None:
            return "No job with this id (its result expired and was pruned)."
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:django_jobqueue_job_change", args=[job.pk]),
            status_badge(job.status),
        )

    @admin.display(description="args")
    def args_display(self, letter: DeadLetter) -> SafeString:
        return pretty_json(letter.args)

    @admin.display(description="kwargs")
    def kwargs_display(self, letter: DeadLetter) -> SafeString:
        return pretty_json(letter.kwargs)

    @admin.display(description="error")
    def error_display(self, letter: DeadLetter) -> SafeString:
        return pre(letter.error)

    @admin.display(description="traceback")
    def traceback_display(self, letter: DeadLetter) -> SafeString:
        return pre(letter.traceback)

    # -- requeue: the action and the button ---------------------------------------------------

    @admin.action(description="Requeue selected dead letters", permissions=["requeue"])
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        selected = queryset.count()
        report = requeue_report(queryset)
        self._report(request, report, selected)

    def _report(self, request: HttpRequest, report: RequeueReport, selected: int) -> None:
        if report.requeued:
            count = len(report.requeued)
            if count == 1:
                job = Job.objects.filter(job_id=report.requeued[0]).only("pk").first()
                target = (
                    reverse("admin:django_jobqueue_job_change", args=[job.pk])
                    if job is not None
                    else reverse("admin:django_jobqueue_job_changelist")
                )
                message = format_html(
                    'Requeued 1 dead letter: job <a href="{}">{}</a> is queued again.',
                    target,
                    report.requeued[0],
                )
            else:
                message = format_html(
                    "Requeued {} dead letters: their jobs are queued again.", count
                )
            self.message_user(request, message, messages.SUCCESS)
        if report.skipped:
            self.message_user(
                request,
                f"Skipped {len(report.skipped)} dead letter(s) whose job is already queued or "
                f"running ({', '.join(report.skipped[:10])}"
                f"{', ...' if len(report.skipped) > 10 else ''}); they are kept.",
                messages.WARNING,
            )
        gone = selected - len(report.requeued) - len(report.skipped)
        if gone > 0:
            self.message_user(
                request,
                f"{gone} dead letter(s) had already been requeued or deleted by someone else.",
                messages.INFO,
            )
        if not selected:
            self.message_user(
                request,
                "That dead letter had already been requeued or deleted by someone else.",
                messages.INFO,
            )

    def get_urls(self) -> list[URLPattern]:
        requeue = path(
            "<path:object_id>/requeue/",
            self.admin_site.admin_view(self.requeue_view),
            name="django_jobqueue_deadletter_requeue",
        )
        return [requeue, *super().get_urls()]

    def requeue_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: requeue one dead letter, then go to its job (or back, if it was skipped)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_requeue_permission(request):
            raise PermissionDenied
        letter = self.get_object(request, unquote(object_id))
        if letter is None:
            self._report(request, RequeueReport(), 0)
            return HttpResponseRedirect(reverse("admin:django_jobqueue_deadletter_changelist"))
        report = requeue_report([letter.pk])
        self._report(request, report, 1)
        if report.requeued:
            job = Job.objects.filter(job_id=letter.job_id).only("pk").first()
            if job is not None:
                return HttpResponseRedirect(
                    reverse("admin:django_jobqueue_job_change", args=[job.pk])
                )
            return HttpResponseRedirect(reverse("admin:django_jobqueue_deadletter_changelist"))
        return HttpResponseRedirect(
            reverse("admin:django_jobqueue_deadletter_change", args=[letter.pk])
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_requeue": self.has_requeue_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)
