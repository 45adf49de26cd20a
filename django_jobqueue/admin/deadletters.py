"""The dead-letter admin: a list whose error column is a one-line summary computed from the
start of each error in SQL (never the whole error or traceback), read-only pages, and
requeue (the action and a button) through :func:`django_jobqueue.deadletters.requeue`."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Substr
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..base import DEAD_LETTER_FIELDS
from ..deadletters import RequeueReport, requeue_report
from ..models import DeadLetter, Job
from .actions import DeadLetterActions
from .bulk import record
from .display import (
    ERROR_HEAD,
    QueueAdminMixin,
    all_fields,
    capped_values,
    error_line,
    error_summary,
    is_changelist,
    job_id_column,
    name_column,
    precise,
    queue_column,
    short_time,
    show_capped,
    status_badge,
)

#: The columns the dead-letter list reads; the error only as its first ``ERROR_HEAD``
#: characters (``djq_error_head``).
DEAD_LETTER_LIST_FIELDS = ("id", "job_id", "name", "queue", "attempts", "max_attempts", "failed_at")

#: How a dead letter's page shows the fields it kept of its job (``DEAD_LETTER_FIELDS``):
#: by another name, or ``""`` where another section shows it (the id and attempts first, the
#: arguments in their own); any other field as it is.
_KEPT_SHOWN_AS = {
    "job_id": "",
    "max_attempts": "",
    "args": "",
    "kwargs": "",
    "result_ttl": "result_ttl_display",
    "enqueued_at": "enqueued_at_display",
}
#: The page's section of the job's fields: every one requeue copies or starts afresh.
DEAD_LETTER_JOB_FIELDS = tuple(
    shown for name in DEAD_LETTER_FIELDS if (shown := _KEPT_SHOWN_AS.get(name, name))
)

#: The large values of a dead letter's page, read at most ``VALUE_CAP`` characters each.
DEAD_LETTER_LARGE_VALUES = {
    "args": ("args", True),
    "kwargs": ("kwargs", True),
    "error": ("error", False),
    "traceback": ("traceback", False),
}


@admin.register(DeadLetter)
class DeadLetterAdmin(QueueAdminMixin, DeadLetterActions):
    list_display = (
        job_id_column,
        name_column,
        queue_column,
        "error_line",
        "attempts_display",
        "failed",
    )
    list_display_links = (job_id_column,)
    list_filter = ("queue", "name")  # the values in the table: letters outlive their code
    search_text_fields = (*QueueAdminMixin.search_text_fields, "error")
    actions = ("requeue_selected", "run_again_selected", "delete_selected")
    fieldsets = (
        (
            None,
            {"fields": ("job_id", "job_link", "attempts_display", "failed_at_display")},
        ),
        ("The job, as requeue writes it again", {"fields": DEAD_LETTER_JOB_FIELDS}),
        ("Arguments", {"fields": ("args_display", "kwargs_display")}),
        ("Failure", {"fields": ("error_display", "traceback_display")}),
    )
    readonly_fields = all_fields(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        queryset: QuerySet[DeadLetter] = super().get_queryset(request)
        if is_changelist(request):
            return queryset.only(*DEAD_LETTER_LIST_FIELDS).annotate(
                djq_error_head=Substr("error", 1, ERROR_HEAD)
            )
        return queryset.defer(*DEAD_LETTER_LARGE_VALUES).annotate(
            **capped_values(**DEAD_LETTER_LARGE_VALUES)
        )

    # -- columns and fields ------------------------------------------------------------------

    @admin.display(description="error")
    def error_line(self, letter: DeadLetter) -> SafeString | str:
        head = getattr(letter, "djq_error_head", None)
        return error_line(error_summary(letter.error[:ERROR_HEAD] if head is None else head))

    failed_at_display = precise("failed_at", "failed at")

    @admin.display(description="failed", ordering="failed_at")
    def failed(self, letter: DeadLetter) -> SafeString | str:
        return short_time(letter.failed_at)

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

    @admin.display(description="error")
    def error_display(self, letter: DeadLetter) -> SafeString:
        return show_capped(letter, "error", is_json=False)

    @admin.display(description="traceback")
    def traceback_display(self, letter: DeadLetter) -> SafeString:
        return show_capped(letter, "traceback", is_json=False)

    # -- requeue: the button (the actions are in .actions) ---------------------------------

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
        if report.requeued:
            message = f"Requeued: job {letter.job_id} is queued again"
            record(request, DeadLetter, [(letter.pk, letter.job_id, message)], CHANGE)
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
