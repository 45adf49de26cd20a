"""The live workers: one row per running ``runjobworker`` (its heartbeat), read-only; with
queues on several databases, those of one database at a time (:mod:`.databases`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils import timezone

from ..models import WorkerHeartbeat
from .databases import DatabaseAdminMixin
from .display import NulSafeAdmin, human_seconds, short_time


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(DatabaseAdminMixin, NulSafeAdmin):
    list_display = (
        "name",
        "host",
        "pid",
        "queues_display",
        "concurrency",
        "jobs_running",
        "jobs_done",
        "scheduling",
        "started",
        "seen",
    )
    search_fields = ("name", "host")
    list_filter = ("host", "scheduling")
    fields = list_display
    readonly_fields = list_display

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a dead worker's row ages out by itself

    @admin.display(description="queues")
    def queues_display(self, row: WorkerHeartbeat) -> str:
        return ", ".join(row.queues) if row.queues else "all"

    @admin.display(description="started", ordering="started_at")
    def started(self, row: WorkerHeartbeat) -> Any:
        return short_time(row.started_at)

    @admin.display(description="last seen", ordering="last_seen")
    def seen(self, row: WorkerHeartbeat) -> str:
        return f"{human_seconds((timezone.now() - row.last_seen).total_seconds())} ago"
