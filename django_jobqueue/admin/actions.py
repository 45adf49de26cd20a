"""The console's actions on jobs and dead letters: each a batch of rows handed to the
library's own verb (:func:`~django_jobqueue.cancel`, :func:`~django_jobqueue.control.retry_now`,
:func:`~django_jobqueue.rerunning.run_again`, :func:`~django_jobqueue.deadletters.requeue_report`,
a delete), run by :func:`.bulk.perform` on a page's selection or on every match, in batches,
with the admin's history.

:class:`JobActions` and :class:`DeadLetterActions` are the admins' action methods; the
admins list them in ``actions``. ``delete_selected`` replaces Django's own (which loads every
selected row and its related rows at once) by the batched path.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.models import CHANGE, DELETION
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from ..base import Status
from ..control import cancel, retry_now
from ..deadletters import requeue_report
from ..models import DeadLetter, Job
from ..rerunning import STILL_ACTIVE, UNIQUE_ACTIVE, run_again
from ..routers import queue_database
from .bulk import BulkAction, Tally, perform

#: Why :func:`~django_jobqueue.rerunning.run_again` left a row, as the admin says it.
WHY = {
    STILL_ACTIVE: "Skipped {n} not finished (queued, blocked or running): left unchanged.",
    UNIQUE_ACTIVE: "Skipped {n} of a unique id that has a run queued or running already.",
}


def _ids(model: type[Any], pks: list[int], *fields: str) -> list[tuple[Any, ...]]:
    return list(
        model.objects.using(queue_database())
        .filter(pk__in=pks)
        .order_by("pk")
        .values_list("pk", "job_id", *fields)
    )


def cancel_rows(pks: list[int]) -> Tally:
    """:func:`~django_jobqueue.cancel` each job: queued ones at once, running ones asked."""
    tally = Tally()
    for pk, job_id, status in _ids(Job, pks, "status"):
        if cancel(job_id):
            asked = status == Status.RUNNING
            tally.done.append((pk, job_id, "Asked its worker to stop it" if asked else "Cancelled"))
        else:
            tally.left["{n} had already finished: left unchanged."] += 1
    return tally


def retry_rows(pks: list[int]) -> Tally:
    """:func:`~django_jobqueue.control.retry_now` on the jobs: their retries start now."""
    tally = Tally()
    found = _ids(Job, pks, "status")
    hurried = set(retry_now([job_id for _pk, job_id, _status in found], using=queue_database()))
    for pk, job_id, status in found:
        if job_id in hurried:
            tally.done.append((pk, job_id, "Retry now: its wait for run_after was skipped"))
        elif status == Status.RUNNING:
            tally.left["Skipped {n} running: retry now starts a queued retry only."] += 1
        else:
            tally.left[
                "Skipped {n} not waiting for a retry (finished, blocked, ready or deferred)."
            ] += 1
    return tally


def again_rows(pks: list[int], *, dead_letters: bool) -> Tally:
    """:func:`~django_jobqueue.rerunning.run_again`: a new job each, same arguments and
    options."""
    tally = Tally()
    shown = dict(_ids(DeadLetter if dead_letters else Job, pks))
    report = run_again(list(shown), dead_letters=dead_letters, using=queue_database())
    for pk, new_id in report.started.items():
        tally.done.append((pk, shown[pk], f"Ran again as job {new_id}"))
        tally.made.append(new_id)
    tally.left.update(WHY[why] for why in report.skipped.values())
    return tally


def requeue_rows(pks: list[int]) -> Tally:
    """:func:`~django_jobqueue.deadletters.requeue_report`: their jobs queued again."""
    tally = Tally()
    found = _ids(DeadLetter, pks)
    report = requeue_report([pk for pk, _job_id in found])
    requeued = set(report.requeued)
    for pk, job_id in found:
        if job_id in requeued:
            tally.done.append((pk, job_id, f"Requeued: job {job_id} is queued again"))
            tally.made.append(job_id)
            requeued.discard(job_id)  # two letters of one id: the first one requeued it
        elif job_id in report.skipped:
            tally.left["Skipped {n} whose job is queued or running already: kept."] += 1
    return tally


def delete_rows(model: type[Any], pks: list[int]) -> Tally:
    """Delete the rows (jobs with their results and dependency rows)."""
    found = _ids(model, pks)
    model.objects.using(queue_database()).filter(pk__in=[pk for pk, _ in found]).delete()
    return Tally(done=[(pk, job_id, "Deleted") for pk, job_id in found])


CANCEL = BulkAction(
    cancel_rows,
    "cancel",
    "Cancelled",
    "job",
    CHANGE,
    note="A running job stops when its worker hears of it; it ends 'cancelled'.",
)
RETRY_NOW = BulkAction(retry_rows, "retry now", "Started the retries of", "job", CHANGE)
RUN_JOBS_AGAIN = BulkAction(
    lambda pks: again_rows(pks, dead_letters=False),
    "run again",
    "Ran again",
    "job",
    CHANGE,
    note="Each is a new job with the same arguments and options.",
)
DELETE_JOBS = BulkAction(
    lambda pks: delete_rows(Job, pks), "delete", "Deleted", "job", DELETION, confirm=True
)
REQUEUE = BulkAction(
    requeue_rows, "requeue", "Requeued", "dead letter", CHANGE, note="Their jobs are queued again."
)
RUN_LETTERS_AGAIN = BulkAction(
    lambda pks: again_rows(pks, dead_letters=True),
    "run again",
    "Ran again",
    "dead letter",
    CHANGE,
    note="Each is a new job with the same arguments and options; the letters are kept.",
)
DELETE_LETTERS = BulkAction(
    lambda pks: delete_rows(DeadLetter, pks),
    "delete",
    "Deleted",
    "dead letter",
    DELETION,
    confirm=True,
)


class JobActions(admin.ModelAdmin):  # type: ignore[type-arg]
    """Cancel, retry now, run again and delete, on the selected jobs or every match."""

    def has_cancel_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return request.user.has_perm("django_jobqueue.change_job")

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        """Cancel each job (``django_jobqueue.cancel``): queued ones at once, running ones
        asked to stop; finished ones are left as they are."""
        return perform(self, request, queryset, CANCEL)

    @admin.action(description="Retry selected jobs now (skip their wait)", permissions=["cancel"])
    def retry_now_selected(
        self, request: HttpRequest, queryset: QuerySet[Job]
    ) -> HttpResponse | None:
        """Start each queued retry now (:func:`django_jobqueue.control.retry_now`)."""
        return perform(self, request, queryset, RETRY_NOW)

    @admin.action(description="Run selected jobs again (new jobs)", permissions=["cancel"])
    def run_again_selected(
        self, request: HttpRequest, queryset: QuerySet[Job]
    ) -> HttpResponse | None:
        """A new job per finished job (:func:`django_jobqueue.rerunning.run_again`)."""
        return perform(self, request, queryset, RUN_JOBS_AGAIN)

    @admin.action(description="Delete selected jobs", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        """Delete the jobs, in batches, after a confirmation."""
        return perform(self, request, queryset, DELETE_JOBS)


class DeadLetterActions(admin.ModelAdmin):  # type: ignore[type-arg]
    """Requeue, run again and delete, on the selected dead letters or every match."""

    def has_requeue_permission(self, request: HttpRequest, obj: DeadLetter | None = None) -> bool:
        return request.user.has_perm("django_jobqueue.change_deadletter")

    @admin.action(description="Requeue selected dead letters", permissions=["requeue"])
    def requeue_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        """Requeue (:func:`django_jobqueue.deadletters.requeue_report`): the job again, same
        id; the dead letter is deleted."""
        return perform(self, request, queryset, REQUEUE)

    @admin.action(
        description="Run selected again (new jobs, letters kept)", permissions=["requeue"]
    )
    def run_again_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        """A new job per dead letter (:func:`django_jobqueue.rerunning.run_again`)."""
        return perform(self, request, queryset, RUN_LETTERS_AGAIN)

    @admin.action(description="Delete selected dead letters", permissions=["delete"])
    def delete_selected(
        self, request: HttpRequest, queryset: QuerySet[DeadLetter]
    ) -> HttpResponse | None:
        """Delete the dead letters, in batches, after a confirmation."""
        return perform(self, request, queryset, DELETE_LETTERS)
