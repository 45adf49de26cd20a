"""The live admin: the job list, a job's page and the queue overview update in place.

``console.js`` (``static/django_jobqueue/``) asks one small, staff-only JSON view,
``<admin>/django_jobqueue/job/live/``, for what it shows, and the database stays the truth:

* ``?rows=<pk>,<pk>,...``: the job list's cells of those rows (at most :data:`MAX_ROWS`), as
  the list renders them (every ``list_display`` column but the link and the checkbox): one
  query for the whole page, never the arguments, results or errors.
* ``?job=<pk>``: the read-only fields of a job's page, as the page renders them (the same
  query as the page, plus the page's own workflow and dead-letter lookups).
* ``?overview=1``: the overview's rows (:func:`.overview.build_overview`: its three job
  queries and one dead-letter query), as ``overview_row.html`` renders them.

When the site runs under ASGI with the routes of :mod:`django_jobqueue.routing`, the list and
a job's page also open ``ws/jobqueue/admin/`` (:mod:`django_jobqueue.console`), which says
which of their jobs changed, so they ask only then; otherwise, and for the overview (whose
counts change with every job of every queue), they ask every :data:`POLL_SECONDS` or
:data:`OVERVIEW_POLL_SECONDS`. Cells are replaced in place: the checkboxes, the selection
and a pause reason being typed are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.admin import ModelAdmin
from django.contrib.admin.helpers import AdminReadonlyField
from django.contrib.admin.utils import display_for_field, lookup_field
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import conditional_escape

from ..models import Job
from .databases import chosen_database
from .overview import CHART_MINUTES, build_overview
from .pausing import can_pause

#: Seconds between two reads of the list or a job's page when polling (no WebSocket).
POLL_SECONDS = 3
#: Seconds between two reads of the overview (always polled: see the module's docstring).
OVERVIEW_POLL_SECONDS = 5
#: Rows one request may ask for: more than a list page shows (``list_per_page``, 100).
MAX_ROWS = 500


def _ids(value: str, limit: int) -> list[int]:
    """Primary keys from ``1,2,3``: at most ``limit`` of them; anything else is refused."""
    parts = [part for part in value.split(",") if part]
    if len(parts) > limit or not all(part.isdigit() and len(part) <= 18 for part in parts):
        raise ValueError(f"at most {limit} primary keys, comma-separated digits")
    return [int(part) for part in parts]


def live_columns(model_admin: ModelAdmin[Job], request: HttpRequest) -> list[str | Any]:
    """The list's columns that change with a job: every ``list_display`` column but the
    links (the job id never changes) and the checkbox."""
    links = set(model_admin.get_list_display_links(request, model_admin.list_display) or ())
    return [
        column
        for column in model_admin.get_list_display(request)
        if column not in links and column != "action_checkbox"
    ]


def column_name(column: Any) -> str:
    """The name in the cell's CSS class (``field-<name>``), as the changelist writes it."""
    return column if isinstance(column, str) else column.__name__


def _cell(column: Any, obj: Any, model_admin: Any) -> str:
    """A cell as the changelist renders it: a model field through ``display_for_field``,
    anything else (a column function, a method) as it returns it."""
    field, _attr, value = lookup_field(column, obj, model_admin)
    empty = model_admin.get_empty_value_display()
    if field is not None:
        return str(conditional_escape(display_for_field(value, field, empty)))
    return str(conditional_escape(empty if value is None else value))


def rows(
    model_admin: ModelAdmin[Job], request: HttpRequest, pks: Sequence[int], fields: Sequence[str]
) -> dict[str, Any]:
    """``{pk: {"status", "cells": {column: html}}}`` of the jobs ``pks`` that exist, reading
    only ``fields`` (the list's own columns), in one query."""
    columns = live_columns(model_admin, request)
    found = Job.objects.using(chosen_database(request)).filter(pk__in=pks).only(*fields)
    return {
        str(job.pk): {
            "status": job.status,
            "cells": {column_name(column): _cell(column, job, model_admin) for column in columns},
        }
        for job in found
    }


def page_fields(
    model_admin: ModelAdmin[Job], request: HttpRequest, pk: int
) -> dict[str, Any] | None:
    """``{"status", "fields": {name: html}}`` of a job's page (every read-only field, as the
    page renders it); None when the job is gone."""
    job = model_admin.get_object(request, str(pk))
    if job is None:
        return None
    form = model_admin.get_form(request, job, change=True)(instance=job)  # as the page: no fields
    fields = {
        str(name): str(
            AdminReadonlyField(form, name, is_first=False, model_admin=model_admin).contents()
        )
        for name in model_admin.get_readonly_fields(request, job)
    }
    return {"status": job.status, "fields": fields}


def overview_rows(model_admin: ModelAdmin[Job], request: HttpRequest) -> dict[str, Any]:
    """``{"rows": [html of each row, the total last], "more": n}``: the overview's table."""
    overview = build_overview(timezone.now())
    context = {"can_pause": can_pause(model_admin, request), "chart_minutes": CHART_MINUTES}
    template = "admin/django_jobqueue/job/overview_row.html"
    html = [
        render_to_string(template, {**context, "row": row, "total": False}, request)
        for row in overview.queues
    ]
    html.append(render_to_string(template, {**context, "row": overview.total, "total": True}))
    return {"rows": html, "more": overview.more, "as_of": overview.now.isoformat()}


def live_view(
    model_admin: ModelAdmin[Job], request: HttpRequest, fields: Sequence[str]
) -> JsonResponse:
    """The JSON view described in the module's docstring; staff only (the admin's own
    login check), and whoever may view jobs."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    answer: dict[str, Any]
    try:
        if "rows" in request.GET:
            pks = _ids(request.GET["rows"], MAX_ROWS)
            answer = {"rows": rows(model_admin, request, pks, fields), "poll": POLL_SECONDS}
        elif "job" in request.GET:
            (pk,) = _ids(request.GET["job"], 1) or [0]
            found = page_fields(model_admin, request, pk)
            answer = {"job": found, "poll": POLL_SECONDS}
        elif "overview" in request.GET:
            answer = {**overview_rows(model_admin, request), "poll": OVERVIEW_POLL_SECONDS}
        else:
            raise ValueError("ask for ?rows=<pk>,<pk>..., ?job=<pk> or ?overview=1")
    except ValueError as error:
        return JsonResponse({"error": str(error)}, status=400)
    response = JsonResponse(answer)
    response["Cache-Control"] = "no-store"
    return response
