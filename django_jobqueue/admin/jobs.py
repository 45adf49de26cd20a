"""The job admin: a compact list (it fits a 1280 px screen), read-only job pages whose large
values are cut to size in SQL, and the queue overview under ``overview/``."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..base import Status
from ..models import DeadLetter, Job
from .actions import JobActions
from .display import (
    NameFilter,
    QueueAdminMixin,
    QueueFilter,
    all_fields,
    capped_values,
    human_seconds,
    is_changelist,
    job_id_column,
    name_column,
    pre,
    precise,
    progress_bar,
    progress_display,
    queue_column,
    short_time,
    show_capped,
    status_badge,
)
from .live import live_view
from .overview import overview_page

#: The columns the job list reads (never the arguments, results or errors).
#: Parents or children linked on a job's page (workflows); more are counted, not listed.
WORKFLOW_LINKS = 50

JOB_LIST_FIELDS = (
    "id",
    "job_id",
    "name",
    "queue",
    "status",
    "progress",
    "attempts",
    "max_attempts",
    "enqueued_at",
    "started_at",
    "finished_at",
)

#: The large values of a job page, read at most ``VALUE_CAP`` characters each.
JOB_LARGE_VALUES = {
    "args": ("args", True),
    "kwargs": ("kwargs", True),
    "last_error": ("last_error", False),
    "result": ("outcome__result", True),
    "error": ("outcome__error", False),
    "traceback": ("outcome__traceback", False),
}


@admin.register(Job)
class JobAdmin(QueueAdminMixin, JobActions):
    list_display = (
        job_id_column,
        "status_display",
        name_column,
        queue_column,
        "attempts_display",
        "enqueued",
        "started",
        "finished",
        "duration_display",
    )
    list_display_links = (job_id_column,)
    actions = ("cancel_selected", "retry_now_selected", "run_again_selected", "delete_selected")
    list_filter = ("status", QueueFilter, NameFilter)
    search_text_fields = (*QueueAdminMixin.search_text_fields, "last_error", "outcome__error")
    list_select_related = False
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
                    "progress_display",
                    "attempts_display",
                    "priority",
                    "group",
                )
            },
        ),
        ("Arguments", {"fields": ("args_display", "kwargs_display")}),
        ("Metadata, context, pending run", {"fields": ("metadata", "context", "rerun")}),
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
            "Workflow",
            {"fields": ("parents_display", "children_display", "batch_id")},
        ),
        (
            "Worker",
            {
                "fields": (
                    "worker",
                    "lease_expires_at_display",
                    "notify",
                    "result_ttl_display",
                ),
                "classes": ("collapse",),
            },
        ),
    )
    readonly_fields = all_fields(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        queryset: QuerySet[Job] = super().get_queryset(request)
        if is_changelist(request):
            return queryset.only(*JOB_LIST_FIELDS)
        large = [path for path, _ in JOB_LARGE_VALUES.values() if "__" not in path]
        return queryset.defer(*large).annotate(**capped_values(**JOB_LARGE_VALUES))

    # -- columns and fields ------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_display(self, job: Job) -> SafeString:
        """The status; under it, a running job's progress: a bar no wider than the status
        (the amount and the message on hover), or the count when it has no total."""
        badge = status_badge(job.status)
        if job.status != Status.RUNNING:
            return badge
        shown = progress_bar(job.progress)
        return format_html("{}<br>{}", badge, shown) if shown else badge

    @admin.display(description="runs after")
    def parents_display(self, job: Job) -> SafeString | str:
        """The jobs this one runs after (workflows), with their status, linked."""
        ids = list(job.parent_links.values_list("parent_job_id", flat=True)[: WORKFLOW_LINKS + 1])
        found = {row.job_id: row for row in Job.objects.using(job._state.db).filter(job_id__in=ids)}
        return self._job_links([found.get(job_id) or job_id for job_id in ids])

    @admin.display(description="runs before")
    def children_display(self, job: Job) -> SafeString | str:
        """The jobs that run after this one (workflows), with their status, linked."""
        if not job.has_children:
            return "-"
        children = Job.objects.using(job._state.db).filter(parent_links__parent_job_id=job.job_id)
        return self._job_links(list(children.order_by("id")[: WORKFLOW_LINKS + 1]))

    def _job_links(self, jobs: list[Job | str]) -> SafeString | str:
        if not jobs:
            return "-"
        shown = [
            format_html("{} (gone)", item)
            if isinstance(item, str)
            else format_html(
                '<a href="{}">{}</a> {}',
                reverse(f"{self.admin_site.name}:django_jobqueue_job_change", args=[item.pk]),
                item.job_id,
                status_badge(item.status),
            )
            for item in jobs[:WORKFLOW_LINKS]
        ]
        if len(jobs) > WORKFLOW_LINKS:
            shown.append(format_html("and more (the first {} shown)", WORKFLOW_LINKS))
        return format_html(
            '<ul class="djq-workflow">{}</ul>',
            format_html_join("", "<li>{}</li>", ((line,) for line in shown)),
        )

    @admin.display(description="progress")
    def progress_display(self, job: Job) -> SafeString | str:
        """The last progress the job reported (kept after it finished), message in full."""
        shown = progress_display(job.progress, message_chars=None)
        if not shown:
            return "-"
        updated = job.progress.get("updated_at") if isinstance(job.progress, dict) else None
        return format_html('{} <span class="quiet">{}</span>', shown, updated or "")

    run_after_display = precise("run_after", "run after", "- (at once)")
    started_at_display = precise("started_at", "started at")
    finished_at_display = precise("finished_at", "finished at")
    expires_at_display = precise("expires_at", "outcome kept until")
    lease_expires_at_display = precise("lease_expires_at", "lease expires at")

    @admin.display(description="enqueued", ordering="enqueued_at")
    def enqueued(self, job: Job) -> SafeString | str:
        return short_time(job.enqueued_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, job: Job) -> SafeString | str:
        return short_time(job.started_at, job.enqueued_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, job: Job) -> SafeString | str:
        return short_time(job.finished_at, job.enqueued_at)

    @admin.display(description="duration")
    def duration_display(self, job: Job) -> str:
        return human_seconds(job.duration)

    @admin.display(description="result")
    def result_display(self, job: Job) -> SafeString | str:
        if job.status != Status.COMPLETED:
            return "-"
        return show_capped(job, "result", is_json=True)

    @admin.display(description="error")
    def error_display(self, job: Job) -> SafeString:
        failed = job.status == Status.FAILED
        final = failed and bool(getattr(job, "djq_error_head", None))
        shown = show_capped(job, "error" if final else "last_error", is_json=False)
        if not (final or getattr(job, "djq_last_error_head", None)):
            return shown
        note = "" if failed else " (the last failed attempt; it will retry)"
        letter = None
        if failed:
            letter = DeadLetter.objects.filter(job_id=job.job_id).only("pk").first()
        link = (
            format_html(
                '<p><a href="{}">The dead letter of this job</a></p>',
                reverse("admin:django_jobqueue_deadletter_change", args=[letter.pk]),
            )
            if letter is not None
            else ""
        )
        return format_html("{}{}{}", shown, note, link)

    @admin.display(description="traceback")
    def traceback_display(self, job: Job) -> SafeString:
        if job.status != Status.FAILED:
            return pre("")
        return show_capped(job, "traceback", is_json=False)

    # -- the overview page -------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="django_jobqueue_job_overview",
        )
        live = path(
            "live/",
            self.admin_site.admin_view(self.live_view),
            name="django_jobqueue_job_live",
        )
        return [overview, live, *super().get_urls()]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        return overview_page(self, request)

    def live_view(self, request: HttpRequest) -> HttpResponse:
        """What the live pages read (:mod:`.live`): list rows, a job's fields, the overview."""
        return live_view(self, request, JOB_LIST_FIELDS)
