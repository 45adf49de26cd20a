"""The console's bulk actions: the selected rows of a page, or with Django's "Select all N"
(``select_across``) every row the list's filters and search match, in bounded batches.

An action is a function of one batch of primary keys (:data:`BATCH` at most) that calls the
library's verb (``cancel``, ``retry_now``, ``run_again``, ``requeue_report``, a delete) and
returns a :class:`Tally`: what it did to which row, and what it left and why. Each batch is
one transaction on the queue's database, with its admin history (one ``LogEntry`` per row
acted on, written by one INSERT, in the batch's transaction where the history shares the
queue's database): memory and transaction length stay the same for ten rows or a million.

Acting on every match shows the count first and asks to confirm (so does delete, always).
The confirmation remembers the largest primary key it counted: rows that arrive later and
match too are not acted on; rows that stopped matching or are gone are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.admin import ModelAdmin, helpers
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.contenttypes.models import ContentType
from django.db import router, transaction
from django.db.models import Max, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..deadletters import write_lock_first
from ..routers import routed

#: Rows per batch: one transaction, one statement or a few per verb, one history INSERT.
BATCH = 500

#: The confirmation's field holding the largest primary key it counted.
UPTO = "djq_upto"


@dataclass
class Tally:
    """One batch's outcome: ``done`` holds ``(pk, shown as, history message)`` of each row
    acted on; ``left`` counts the rows left alone, by why: a sentence where ``{n}`` stands for
    how many ("{n} had already finished: left unchanged.")."""

    done: list[tuple[int, str, str]] = field(default_factory=list)
    left: Counter[str] = field(default_factory=Counter)
    #: The ids of the jobs the action queued (requeue, run again): one is linked.
    made: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.done += other.done
        self.left.update(other.left)
        self.made += other.made


@dataclass(frozen=True)
class BulkAction:
    """An action done batch by batch: ``run(pks)`` acts on one batch; ``verb`` and
    ``noun`` make the messages ("Cancelled 4,800 jobs"); ``flag`` is the history's
    ``action_flag``; ``confirm``: ask even for a page's selection (delete)."""

    run: Callable[[list[int]], Tally]
    verb: str
    past: str
    noun: str
    flag: int
    confirm: bool = False
    note: str = ""


def rows(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def perform(
    model_admin: ModelAdmin[Any],
    request: HttpRequest,
    queryset: QuerySet[Any],
    action: BulkAction,
) -> HttpResponse | None:
    """Run ``action`` on what the admin selected (the page's rows, or every match), after a
    confirmation page when it acts on every match or ``action.confirm``; report in messages."""
    across = request.POST.get("select_across") == "1"
    selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
    bounded = queryset.order_by()
    if (across or action.confirm) and request.POST.get("post") != "yes":
        count = bounded.count()
        if not count:
            model_admin.message_user(
                request, f"No {action.noun} matches: nothing was changed.", messages.WARNING
            )
            return None
        upto = bounded.aggregate(top=Max("pk"))["top"]
        return confirmation(model_admin, request, action, count, upto, across, selected)
    if across:
        upto_text = request.POST.get(UPTO, "")
        if upto_text.isdigit():
            bounded = bounded.filter(pk__lte=int(upto_text))
        wanted = None
    else:
        wanted = len(set(selected))
    total = Tally()
    batches = 0
    last = None
    while True:
        page = bounded if last is None else bounded.filter(pk__gt=last)
        pks = list(page.order_by("pk").values_list("pk", flat=True)[:BATCH])
        if not pks:
            break
        # The rows' own database (the list's "database" filter, admin/databases.py): the
        # verbs' queue_database() names it inside (pks are per database).
        with routed(bounded.db), transaction.atomic(using=bounded.db):
            write_lock_first(bounded)  # SQLite: before the batch's first read
            tally = action.run(pks)
            record(request, model_admin.model, tally.done, action.flag)
        total.add(tally)
        batches += 1
        last = pks[-1]
    seen = len(total.done) + sum(total.left.values())
    report(model_admin, request, action, total, batches, gone=(wanted or 0) - seen)
    return None


def confirmation(
    model_admin: ModelAdmin[Any],
    request: HttpRequest,
    action: BulkAction,
    count: int,
    upto: int,
    across: bool,
    selected: Sequence[str],
) -> TemplateResponse:
    """The page that shows how many rows the action would touch, and asks to confirm."""
    opts = model_admin.model._meta
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{action.verb.capitalize()} {rows(count, action.noun)}?",
        "opts": opts,
        "action_name": request.POST.get("action", ""),
        "action": action,
        "count": count,
        "count_text": rows(count, action.noun),
        "across": across,
        "selected": selected,
        "upto": upto,
        "upto_field": UPTO,
        "batches": -(-count // BATCH),
        "batch": BATCH,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": model_admin.media,
    }
    return TemplateResponse(request, "admin/django_jobqueue/bulk_confirmation.html", context)


def record(
    request: HttpRequest, model: type[Any], done: Sequence[tuple[int, str, str]], flag: int
) -> None:
    """The admin's history of one batch: a ``LogEntry`` per row, with the user and the
    row's message, in one INSERT (as ``LogEntry.objects.log_actions`` writes them)."""
    if not done:
        return
    user_id = request.user.pk
    assert user_id is not None  # the admin's views require a logged-in staff user
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    entries = [
        LogEntry(
            user_id=user_id,
            content_type_id=content_type.pk,
            object_id=str(pk),
            object_repr=shown[:200],
            action_flag=flag,
            change_message=message,
        )
        for pk, shown, message in done
    ]
    LogEntry.objects.using(router.db_for_write(LogEntry)).bulk_create(entries)


def job_link(job_id: str) -> SafeString:
    """`` Job <id> (linked).``: the one job an action queued."""
    url = reverse("admin:django_jobqueue_job_change", args=[quote(job_id)])
    return format_html(' Job <a href="{}">{}</a>.', url, job_id)


def report(
    model_admin: ModelAdmin[Any],
    request: HttpRequest,
    action: BulkAction,
    total: Tally,
    batches: int,
    *,
    gone: int,
) -> None:
    """The messages after a bulk action: how many it acted on, left (and why), and gone."""
    if total.done:
        in_batches = f" in {batches} batches" if batches > 1 else ""
        model_admin.message_user(
            request,
            format_html(
                "{} {}{}.{}{}",
                action.past,
                rows(len(total.done), action.noun),
                in_batches,
                f" {action.note}" if action.note else "",
                job_link(total.made[0]) if len(total.made) == 1 else "",
            ),
            messages.SUCCESS,
        )
    for why, count in sorted(total.left.items()):
        model_admin.message_user(request, why.format(n=rows(count, action.noun)), messages.WARNING)
    if gone > 0:
        model_admin.message_user(
            request,
            f"{rows(gone, action.noun)} had already been requeued or deleted by someone "
            "else (or pruned): nothing was done to them.",
            messages.INFO,
        )
    if not total.done and not total.left and gone <= 0:
        model_admin.message_user(
            request, f"No {action.noun} matches any more: nothing was changed.", messages.INFO
        )
