"""Batches (``with batch(...)``): one row per batch with its counters, read from the
batch's own row (no scan of the job table), its callbacks' state, and a link to its jobs
(the job list filtered by ``batch_id``). Read-only: a batch's row is written by its jobs'
endings and pruned with them."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ..base import FINISHED
from ..models import Job, JobBatch
from ..querysets.batches import CALLBACKS, callback_id
from .display import NulSafeAdmin, short_time, status_badge

#: The counters, in the order the list and the page show them.
COUNTERS: tuple[str, ...] = ("total", "pending", *FINISHED)


def callbacks_state(row: JobBatch) -> str:
    """Where the batch's callbacks are: none, waiting (its block or its jobs), enqueued."""
    if not any(getattr(row, kind) for kind in CALLBACKS):
        return "none" if row.callbacks_done or row.sealed else "none (open)"
    if row.callbacks_done:
        return "enqueued"
    return "waiting for its jobs" if row.sealed else "waiting (batch open)"


@admin.register(JobBatch)
class JobBatchAdmin(NulSafeAdmin):
    list_display = ("id", "name", *COUNTERS, "callbacks", "created", "finished")
    list_display_links = ("id", "name")
    search_fields = ("=id", "name")
    list_filter = ("sealed", "callbacks_done")
    fields = (
        ("id", "name")  # noqa: RUF005 - unpacked, mypy infers a union of tuples
        + COUNTERS
        + (
            "sealed",
            "callbacks",
            "callback_jobs",
            "jobs_link",
            "created",
            "finished",
        )
    )
    readonly_fields = fields
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # pruned with its jobs (jobqueue prune)

    @admin.display(description="callbacks")
    def callbacks(self, row: JobBatch) -> str:
        return callbacks_state(row)

    @admin.display(description="callback jobs")
    def callback_jobs(self, row: JobBatch) -> SafeString | str:
        """Each callback's job, linked, with its status (once enqueued)."""
        ids = {callback_id(row.id, kind): kind for kind in CALLBACKS if getattr(row, kind)}
        if not ids:
            return "-"
        found = {job.job_id: job for job in Job.objects.using(row._state.db).filter(job_id__in=ids)}
        shown = []
        for job_id, kind in ids.items():
            job = found.get(job_id)
            if job is None:
                gone = "pruned" if row.callbacks_done else "not enqueued yet"
                shown.append(format_html("{} ({})", kind, gone))
                continue
            change = reverse(f"{self.admin_site.name}:django_jobqueue_job_change", args=[job.pk])
            shown.append(
                format_html('<a href="{}">{}</a> {}', change, kind, status_badge(job.status))
            )
        return format_html_join(", ", "{}", ((item,) for item in shown))

    @admin.display(description="jobs")
    def jobs_link(self, row: JobBatch) -> SafeString:
        url = reverse(f"{self.admin_site.name}:django_jobqueue_job_changelist")
        return format_html('<a href="{}?batch_id={}">the jobs of this batch</a>', url, row.id)

    @admin.display(description="created", ordering="created_at")
    def created(self, row: JobBatch) -> Any:
        return short_time(row.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, row: JobBatch) -> Any:
        return short_time(row.finished_at) if row.finished_at else "-"
