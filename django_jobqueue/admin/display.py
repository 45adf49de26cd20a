"""What the job and dead-letter admins share: formatting, the capped paginator, the filters,
short list columns, large values cut to size in SQL, and :class:`QueueAdminMixin` (columns,
detail fields, search and URLs by the public job id).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db.models import F, Model, QuerySet, TextField
from django.db.models.functions import Cast, Length, Substr
from django.http import HttpRequest
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from .. import pauses
from ..base import Status
from ..registry import registry
from .databases import DatabaseAdminMixin
from .search import SEARCH_WINDOW, search

#: The job and dead-letter lists count at most this many matching rows; beyond it the list
#: says "more than 10,000" and pages past it are reached by narrowing the filters.
COUNT_CAP = 10_000

#: A change page shows at most this many characters of each large value (arguments,
#: result, error, traceback); the database sends no more than that.
VALUE_CAP = 64 * 1024

#: The dead-letter list reads this many characters of each error, for its one-line summary.
ERROR_HEAD = 500

#: Characters of the error summary shown in the dead-letter list (all of it on hover).
ERROR_LINE_CHARS = 90

STATUS_COLOURS = {
    Status.BLOCKED: "#b39ddb",
    Status.QUEUED: "#79aec8",
    Status.RUNNING: "#e6a23c",
    Status.COMPLETED: "#3a9d5d",
    Status.FAILED: "#ba2121",
    Status.CANCELLED: "#666",
}


if TYPE_CHECKING:
    _Paginator = Paginator[Any]
else:  # Django's Paginator is not subscriptable at run time
    _Paginator = Paginator


class CappedCountPaginator(_Paginator):
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
        counted = queryset.order_by().values("pk")[: self.cap + 1].count()  # no annotations
        self.capped = counted > self.cap
        return int(min(counted, self.cap))


# -- formatting ------------------------------------------------------------------------------


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


#: Characters of a progress message shown in the job list (all of it on hover and on the page).
PROGRESS_MESSAGE_CHARS = 40


def _amount(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _progress_parts(progress: Any) -> tuple[Any, Any, str] | None:
    """``(current, total or None, message)`` of a job's progress; None when there is none
    (or it is not the shape the worker writes)."""
    if not isinstance(progress, dict):
        return None
    current, total = progress.get("current"), progress.get("total")
    if isinstance(current, bool) or not isinstance(current, int | float):
        return None
    if isinstance(total, bool) or not isinstance(total, int | float) or total <= 0:
        total = None
    return current, total, str(progress.get("message") or "")


def _bar(current: Any, total: Any) -> SafeString:
    return format_html(
        '<progress max="{}" value="{}"></progress>',
        _amount(total),
        _amount(max(0, min(current, total))),
    )


def progress_display(progress: Any, *, message_chars: int | None = PROGRESS_MESSAGE_CHARS) -> Any:
    """A job's last reported progress: a small bar (when it has a total) and
    "40 / 100 rendering"; "" when there is none (or it is not the shape the worker writes)."""
    parts = _progress_parts(progress)
    if parts is None:
        return ""
    current, total, message = parts
    shown = Truncator(message).chars(message_chars) if message_chars else message
    amount = f"{_amount(current)} / {_amount(total)}" if total else _amount(current)
    text = f"{amount} {shown}".strip()
    if total is None:
        return format_html('<span class="djq-progress" title="{}">{}</span>', message, text)
    return format_html(
        '<span class="djq-progress" title="{}">{} {}</span>', message, _bar(current, total), text
    )


def progress_bar(progress: Any) -> Any:
    """A list cell's progress, no wider than a status: a bar when the job has a total, the
    count when it has none; the amount and the whole message on hover; "" when there is
    none."""
    parts = _progress_parts(progress)
    if parts is None:
        return ""
    current, total, message = parts
    amount = f"{_amount(current)} / {_amount(total)}" if total else _amount(current)
    hover = f"{amount} {message}".strip()
    if total is None:
        return format_html('<span class="djq-progress" title="{}">{}</span>', hover, amount)
    return format_html(
        '<span class="djq-progress djq-bar" title="{}">{}</span>', hover, _bar(current, total)
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


def seconds_in_words(seconds: int | None) -> str:
    """``3600 s (1 hour)``, ``5400 s (1 hour 30 minutes)``, ``45 s``: a setting in seconds,
    with its unit and, past a minute, a human form."""
    if seconds is None:
        return "-"
    parts = []
    rest = seconds
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount} {unit}{'' if amount == 1 else 's'}")
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds} s ({' '.join(parts[:2])})"


def human_size(characters: int) -> str:
    """``812 characters``, ``64 K characters``, ``50.0 M characters``."""
    if characters < 1024:
        return f"{characters} characters"
    if characters < 1024 * 1024:
        return f"{characters / 1024:.0f} K characters"
    return f"{characters / 1024 / 1024:.1f} M characters"


def compact_time(value: datetime | None, same_day_as: datetime | None = None) -> str:
    """``2026-11-22 07:18:03`` in the current time zone; only ``07:18:03`` when it is the same
    day as ``same_day_as`` (a job's start and finish, next to its enqueue time)."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    if same_day_as is not None and timezone.localtime(same_day_as).date() == local.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def short_time(value: datetime | None, same_day_as: datetime | None = None) -> SafeString | str:
    """A list cell: ``07:18:03`` today (or on ``same_day_as``'s day), ``11-22 07:18`` on
    another day, with the precise time on hover."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    days = {timezone.localdate()}
    if same_day_as is not None:
        days.add(timezone.localtime(same_day_as).date())
    text = local.strftime("%H:%M:%S") if local.date() in days else local.strftime("%m-%d %H:%M")
    return format_html('<span title="{}">{}</span>', precise_time(value), text)


def precise_time(value: datetime | None, empty: str = "-") -> str:
    """``2026-11-22 07:18:03.120 UTC``: a job's times to the millisecond, with the zone."""
    if value is None:
        return empty
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S}.{local.microsecond // 1000:03d} {local.tzname()}"


def precise(field_name: str, label: str, empty: str = "-") -> Any:
    """A detail field: ``field_name``, a time, to the millisecond."""

    @admin.display(description=label, ordering=field_name)
    def show(self: Any, obj: Any) -> str:
        return precise_time(getattr(obj, field_name), empty)

    return show


def short_column(
    field_name: str, description: str, chars: int, *, keep_end: bool = False
) -> Callable[[Any], SafeString | str]:
    """A list column showing ``field_name`` in at most ``chars`` characters, the whole value
    on hover. The value is cut by CSS (the whole value stays in the page, so it can be
    copied or found), or, with ``keep_end``, here at its start (``…send_welcome_email``).

    A function named after the field, so the column keeps the field's CSS class
    (``column-job_id``, ``field-job_id``).
    """

    def column(obj: Any) -> SafeString | str:
        value = str(getattr(obj, field_name) or "")
        if len(value) <= chars:
            return value
        if not keep_end:
            return format_html(
                '<span class="djq-clip" style="max-width: {}ch" title="{}">{}</span>',
                chars,
                value,
                value,
            )
        start = len(value) - (chars - 1)
        end = value[start:]
        if value[start - 1] != "." and "." in end[:-1]:  # a cut word: drop it
            end = end.split(".", 1)[1]
        return format_html('<span title="{}">…{}</span>', value, end)

    column.__name__ = column.__qualname__ = field_name
    return admin.display(description=description, ordering=field_name)(column)


job_id_column = short_column("job_id", "job id", 7)
#: Characters of a job's name in the lists (its end: the function): the job list fits 1,280
#: pixels with the sidebar and the filters open on Django 5.2 and 6.x (tests/test_admin_browser.py).
NAME_CHARS = 16
name_column = short_column("name", "name", NAME_CHARS, keep_end=True)
queue_column = short_column("queue", "queue", 8)


# -- errors and large values -----------------------------------------------------------------


def error_summary(head: str) -> str:
    """One line for an error of which ``head`` is the start: its first line (the exception
    type and message), and, for a short multi-line error, `` … `` and its last line."""
    complete = len(head) < ERROR_HEAD
    lines = [line.strip() for line in head.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) == 1 or not complete:
        return lines[0] + ("" if complete else " …")
    return f"{lines[0]} … {lines[-1]}"


def error_line(summary: str) -> SafeString | str:
    """A list cell: ``summary`` cut to :data:`ERROR_LINE_CHARS`, all of it on hover."""
    short = Truncator(summary).chars(ERROR_LINE_CHARS)
    if short == summary:
        return summary
    return format_html('<span title="{}">{}</span>', summary, short)


def capped_values(**paths: tuple[str, bool]) -> dict[str, Any]:
    """Annotations reading at most :data:`VALUE_CAP` characters of large columns.

    ``name=(path, is_json)`` adds ``djq_<name>_head`` (the start of the value as text, JSON
    for a JSON column) and ``djq_<name>_size`` (its length); :func:`show_capped` renders them.
    """
    annotations: dict[str, Any] = {}
    for name, (path, is_json) in paths.items():
        text = Cast(path, TextField()) if is_json else F(path)
        annotations[f"djq_{name}_head"] = Substr(text, 1, VALUE_CAP)
        annotations[f"djq_{name}_size"] = Length(text)
    return annotations


def show_capped(obj: Model, name: str, *, is_json: bool) -> SafeString:
    """The value annotated by :func:`capped_values` as ``name``: whole (JSON indented) when
    it fits in :data:`VALUE_CAP`, else its start and how much was cut."""
    head: str | None = getattr(obj, f"djq_{name}_head")
    size: int = getattr(obj, f"djq_{name}_size") or 0
    if size <= VALUE_CAP:
        if is_json:
            return pretty_json(None if head is None else json.loads(head))
        return pre(head or "")
    return format_html(
        '<pre class="djq-pre">{}</pre><p class="help djq-cut">Cut: showing the first {} of '
        "{}; the whole value is in the database.</p>",
        head,
        human_size(VALUE_CAP),
        human_size(size),
    )


# -- filters ---------------------------------------------------------------------------------


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
    """The default queue and the queues of the registered jobs (:func:`.pauses.known_queues`)."""
    return pauses.known_queues()


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


# -- the shared admin ------------------------------------------------------------------------


def all_fields(fieldsets: Any) -> tuple[str, ...]:
    """Every field of ``fieldsets``: all of them are read-only."""
    return tuple(name for _title, options in fieldsets for name in options["fields"])


def is_changelist(request: HttpRequest) -> bool:
    match = getattr(request, "resolver_match", None)
    return bool(match and match.url_name and match.url_name.endswith("_changelist"))


def _has_nul(values: Any) -> bool:
    return any("\x00" in value for value in values)


class NulSafeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A NUL character in a filter, a search or an object id finds nothing (an empty list,
    "does not exist"): PostgreSQL cannot even compare text with one (it raises), and no row
    of the queue holds one (the call site refuses NUL in what it stores)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset: QuerySet[Any] = super().get_queryset(request)
        if _has_nul(value for values in request.GET.lists() for value in values[1]):
            return queryset.none()
        return queryset

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        if "\x00" in object_id:
            return None
        return super().get_object(request, object_id, from_field)


class QueueAdminMixin(DatabaseAdminMixin, NulSafeAdmin):
    """Jobs and dead letters alike: read-only rows made by the queue, found by their public
    job id (search and URLs), long lists that never count or load everything; one queue
    database at a time (:mod:`.databases`)."""

    list_per_page = 100
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    search_fields = ("job_id",)  # shows the box; the search is get_search_results
    #: Where a search term that is not a job id is looked for (:mod:`.search`).
    search_text_fields: tuple[str, ...] = ("job_id", "name", "args", "kwargs", "metadata")
    search_help_text = (
        f"A job id (exact, any age), or text in the id, name, arguments, metadata or error of "
        f"the newest {SEARCH_WINDOW:,} rows (older ones: filter by status, queue or name)."
    )

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """A whole job id is one index probe; other text is searched in a bounded window
        of the newest rows (:func:`.search.search`)."""
        return search(queryset, search_term, self.search_text_fields), False

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        """The row of ``object_id``: the internal primary key the admin links with, or else
        the public job id, so an id from the API or a log line can be pasted into the URL
        (``/admin/django_jobqueue/job/<job id>/change/``). The newest row of that job id
        when there are several (dead letters)."""
        if from_field is not None or "\x00" in object_id:
            return super().get_object(request, object_id, from_field)
        if object_id.isdigit() and len(object_id) <= 18:
            found = super().get_object(request, object_id)
            if found is not None:
                return found
        queryset = self.get_queryset(request)
        return queryset.filter(job_id=object_id).order_by("-pk").first()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows belong to the queue: look, requeue dead letters, delete

    # -- columns and fields ------------------------------------------------------------------

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, obj: Any) -> str:
        return f"{obj.attempts} / {obj.max_attempts}"

    @admin.display(description="result ttl")
    def result_ttl_display(self, obj: Any) -> SafeString:
        return format_html(
            '{}<div class="help">{}</div>',
            seconds_in_words(obj.result_ttl),
            "How long the job's outcome (its result or its error) is kept once it finished: "
            "a repeat of its job id within that time gets this outcome instead of a new run.",
        )

    @admin.display(description="args")
    def args_display(self, obj: Any) -> SafeString:
        return show_capped(obj, "args", is_json=True)

    @admin.display(description="kwargs")
    def kwargs_display(self, obj: Any) -> SafeString:
        return show_capped(obj, "kwargs", is_json=True)

    enqueued_at_display = precise("enqueued_at", "enqueued at")
