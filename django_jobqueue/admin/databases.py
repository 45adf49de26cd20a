"""The admin with queues on several databases (``JOBQUEUE["QUEUES"][name]["database"]``):
the job and dead-letter lists show one database at a time, chosen with the "database"
filter (``?database=<alias>``; the main alias by default). The chosen alias follows the
operator to a job's page and its actions (Django keeps the list's filters in
``_changelist_filters``), so a row is read, cancelled or requeued on its own database."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, QueryDict

from ..routers import main_database, queue_databases

#: The query parameter that names the database shown.
PARAMETER = "database"


def chosen_database(request: HttpRequest) -> str:
    """The alias the operator chose with :class:`DatabaseFilter` (on the list, or kept in
    a job page's ``_changelist_filters``); the main alias when none or an unknown one."""
    alias = request.GET.get(PARAMETER)
    if alias is None:
        alias = QueryDict(request.GET.get("_changelist_filters", "")).get(PARAMETER)
    return alias if alias in queue_databases() else main_database()


class DatabaseFilter(admin.SimpleListFilter):
    """Which queue database the list shows: listed only when there are several."""

    title = "database"
    parameter_name = PARAMETER

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        aliases = queue_databases()
        return [(alias, alias) for alias in aliases[1:]] if len(aliases) > 1 else []

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            if choice["display"] == "All":  # no param: the main alias, not every one
                choice["display"] = f"{main_database()} (main)"
            yield choice

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset  # the model admin's get_queryset() reads the alias already


class DatabaseAdminMixin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Lists and reads the rows of the chosen queue database (:func:`chosen_database`)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(chosen_database(request))

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = tuple(super().get_list_filter(request))
        return (DatabaseFilter, *filters) if len(queue_databases()) > 1 else filters
