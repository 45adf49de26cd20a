"""The schedules admin: each periodic job with its cron expression, last and next run;
pause, resume and "run now" (an extra run with an id of its own), each one transaction,
gated by the ``change`` permission. Schedules are defined in code and settings, so rows are
not added or edited here; a row whose schedule was removed can be deleted."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import periodic
from ..cron import CronError
from ..models import Job, Schedule
from ..routers import queue_database
from .display import NulSafeAdmin, short_time


@admin.register(Schedule)
class ScheduleAdmin(NulSafeAdmin):
    list_display = ("name", "job", "cron_display", "state", "last_run", "next_run")
    list_display_links = ("name",)
    list_filter = ("paused",)
    search_fields = ("name", "job")
    actions = ("run_now", "pause", "resume")
    readonly_fields = (
        "name",
        "job",
        "cron_display",
        "state",
        "since",
        "last_tick",
        "last_run",
        "next_run",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # nothing to edit; the actions ask for "change" themselves

    def has_operate_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.has_perm("django_jobqueue.change_schedule"))

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Rows for schedules no worker has seen yet (they count ticks from now on).
        specs, problems = periodic.inspect_schedules()
        periodic.sync(specs)
        for problem in problems:  # a schedule that cannot run is shown with its error
            self.message_user(
                request, f"Cannot run: {problem.message} ({problem.id})", messages.ERROR
            )
        return super().changelist_view(request, extra_context)

    # -- columns ---------------------------------------------------------------------------

    def _spec(self, row: Schedule) -> periodic.ScheduleSpec | None:
        specs = getattr(self, "_specs", None)
        if specs is None:
            specs = self._specs = periodic.specs_by_name()
        return specs.get(row.name)

    def _problem(self, row: Schedule) -> str | None:
        """Why the configured schedule of ``row`` cannot run (``manage.py check``'s error)."""
        problems = getattr(self, "_problems", None)
        if problems is None:
            problems = self._problems = {
                p.name: p.message for p in periodic.inspect_schedules()[1] if p.name
            }
        return problems.get(row.name)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        specs, problems = periodic.inspect_schedules()  # once per request
        self._specs = {spec.name: spec for spec in specs}
        self._problems = {p.name: p.message for p in problems if p.name}
        last_job = Job.objects.filter(job_id=OuterRef("last_job_id")).values("pk")[:1]
        queryset: QuerySet[Schedule] = super().get_queryset(request)
        return queryset.annotate(djq_last_job_pk=Subquery(last_job))

    @admin.display(description="cron", ordering="cron")
    def cron_display(self, row: Schedule) -> str:
        problem = self._problem(row)
        if problem is not None:
            return f"{row.cron} (cannot run: {problem})"
        return row.cron if self._spec(row) is not None else f"{row.cron} (no longer configured)"

    @admin.display(description="state", ordering="paused")
    def state(self, row: Schedule) -> str:
        if self._problem(row) is not None:
            return "error"
        if self._spec(row) is None:
            return "removed"
        return "paused" if row.paused else "active"

    @admin.display(description="last run", ordering="last_enqueued_at")
    def last_run(self, row: Schedule) -> SafeString | str:
        if not row.last_job_id:
            return "-"
        pk = getattr(row, "djq_last_job_pk", None)  # one subquery in the list's query
        when = short_time(row.last_enqueued_at)
        if pk is None:
            return format_html("{} <span title='{}'>(pruned)</span>", when, row.last_job_id)
        return format_html(
            '{} <a href="{}" title="{}">job</a>',
            when,
            reverse("admin:django_jobqueue_job_change", args=[pk]),
            row.last_job_id,
        )

    @admin.display(description="next run")
    def next_run(self, row: Schedule) -> SafeString | str:
        spec = self._spec(row)
        if spec is None:
            return "-"
        try:
            upcoming = periodic.next_run(spec, row)
        except CronError as exc:  # its last tick has passed (a year that is over)
            return f"never: {exc}"
        return "paused" if upcoming is None else short_time(upcoming)

    # -- actions ---------------------------------------------------------------------------

    @admin.action(description="Run selected schedules now (an extra run)", permissions=["operate"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        specs = periodic.specs_by_name()
        names = list(queryset.values_list("name", flat=True))
        known = [specs[name] for name in names if name in specs]
        using = queue_database()
        with transaction.atomic(using=using):
            handles = [periodic.run_now(spec, using=using) for spec in known]
        if handles:
            self.message_user(
                request,
                f"Enqueued {len(handles)} extra run(s): {', '.join(h.id for h in handles)}.",
                messages.SUCCESS,
            )
        missing = sorted(set(names) - set(specs))
        if missing:
            self.message_user(
                request,
                f"Not run: {', '.join(missing)} (no longer configured).",
                messages.WARNING,
            )

    @admin.action(description="Pause selected schedules", permissions=["operate"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_paused(request, queryset, True)

    @admin.action(description="Resume selected schedules", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_paused(request, queryset, False)

    def _set_paused(self, request: HttpRequest, queryset: QuerySet[Schedule], paused: bool) -> None:
        names = list(queryset.values_list("name", flat=True))
        changed = periodic.set_paused(names, paused)
        verb = "Paused" if paused else "Resumed"
        note = "" if paused else "; ticks count from now (missed ones are not run)"
        self.message_user(
            request,
            f"{verb} {changed} schedule(s){note}."
            + (f" {len(names) - changed} already {verb.lower()}." if changed < len(names) else ""),
            messages.SUCCESS,
        )


__all__ = ["ScheduleAdmin"]
