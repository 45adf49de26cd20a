"""Running a job again: a new job with the same arguments and options as a finished job or
a dead letter (the admin's "Run again"; :func:`run_again`).

The new job is written from the fields the job was enqueued with, the one list of them in
:mod:`django_jobqueue.base` (:data:`~django_jobqueue.base.REQUEUE_FIELDS`, which a dead letter
keeps too): name, queue, arguments, priority, group, ``max_attempts``, ``result_ttl``,
``time_limit``, limit keys, metadata, captured context and trace context. It has no attempt
yet, no delay, is enqueued now, and nobody waits for it. What it does not take, by choice:

* **its id**: a fresh one, so the run it repeats keeps its own row, result or error (and a
  dead letter stays, to compare); except a unique job's (``u:...``, ``@job(unique=...)``),
  whose id is the uniqueness key of these arguments: it runs again under that id, replacing
  the finished row as requeue does, and is skipped while a run of that id is queued or
  running (a second run of the same key is what ``unique`` forbids);
* **its place in a workflow**: it runs after no parent (``ctx.parent_results`` is empty) and
  releases no child; to run a workflow's failed step with its children, requeue its dead
  letter (they follow it) or enqueue the workflow again;
* **its batch**: it joins none (the batch counted the run it repeats).

A job that is still queued, blocked or running is skipped: cancel it first, or wait.
One transaction per call; workers are woken when it commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from .base import ACTIVE, FINISHED, REQUEUE_FIELDS, JobSnapshot, NewJob
from .handles import announce
from .models import DeadLetter, Job
from .producing import new_job_ids
from .routers import queue_database
from .uniqueness import UNIQUE_PREFIX

#: Why :func:`run_again` left a job alone (``RunAgainReport.skipped``'s values).
STILL_ACTIVE = "not finished: queued, blocked or running"
UNIQUE_ACTIVE = "a run of its unique id is queued or running"


@dataclass
class RunAgainReport:
    """What :func:`run_again` did: ``started`` maps each source's job id to the new job's id;
    ``skipped`` maps a source's job id to why it was left (:data:`STILL_ACTIVE`,
    :data:`UNIQUE_ACTIVE`). A source that no longer exists is in neither."""

    started: dict[int, str] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)


def run_again(
    sources: Iterable[Job | DeadLetter | int],
    *,
    dead_letters: bool = False,
    using: str | None = None,
) -> RunAgainReport:
    """Write a new job for each of ``sources`` (jobs, or with ``dead_letters`` dead letters:
    instances or primary keys), with its arguments and options (the module's docstring).

    ``using``: the sources' database (primary keys are per database); by default the one
    the instances were read from, else the queue's database. Returns a
    :class:`RunAgainReport` keyed by the sources' primary keys.
    """
    model: Any = DeadLetter if dead_letters else Job
    items = list(sources)
    if using is None:
        read_from = {item._state.db for item in items if not isinstance(item, int)}
        if len(read_from) > 1:
            raise ValueError(
                f"run_again() takes the rows of one database at a time, not of "
                f"{sorted(map(str, read_from))}: call it once per database. Nothing was written."
            )
        using = read_from.pop() if read_from and None not in read_from else queue_database()
    pks = [item if isinstance(item, int) else item.pk for item in items]
    report = RunAgainReport()
    with transaction.atomic(using=using):
        columns = ("pk", "attempt_log", *REQUEUE_FIELDS, *(() if dead_letters else ("status",)))
        rows = list(model.objects.using(using).filter(pk__in=pks).only(*columns).order_by("pk"))
        if not dead_letters:
            report.skipped.update((row.pk, STILL_ACTIVE) for row in rows if row.status in ACTIVE)
            rows = [row for row in rows if row.status in FINISHED]
        unique_ids = {row.job_id for row in rows if row.job_id.startswith(UNIQUE_PREFIX)}
        holders = {
            job.job_id: job
            for job in Job.objects.using(using)
            .select_for_update()
            .filter(job_id__in=unique_ids)
            .only("pk", "job_id", "status")
            .order_by("pk")
        }
        now = timezone.now()
        fresh = iter(new_job_ids(len(rows)))
        new: list[NewJob] = []
        replace: list[int] = []
        taken: set[str] = set()
        for row in rows:
            unique = row.job_id in unique_ids
            job_id = row.job_id if unique else next(fresh)
            holder = holders.get(job_id) if unique else None
            if job_id in taken or (holder is not None and holder.status in ACTIVE):
                report.skipped[row.pk] = UNIQUE_ACTIVE  # a unique id runs once at a time
                continue
            if holder is not None:
                replace.append(holder.pk)
            taken.add(job_id)
            report.started[row.pk] = job_id
            new.append(_again(row, job_id, now))
        if replace:  # finished rows, locked: their results go with them
            Job.objects.using(using).filter(pk__in=replace, status__in=FINISHED).delete()
        inserted = Job.objects.using(using).insert_new(new) if new else set()
        for pk, job_id in list(report.started.items()):
            if job_id not in inserted:  # lost a race for a unique id to a new enqueue
                del report.started[pk]
                report.skipped[pk] = UNIQUE_ACTIVE
    if inserted:
        announce([JobSnapshot.of_new(row) for row in new if row.job_id in inserted], using=using)
    return report


def _again(row: Job | DeadLetter, job_id: str, now: Any) -> NewJob:
    """``row``'s job as enqueued, under ``job_id``, to run at once: the copied fields of
    requeue (:data:`REQUEUE_FIELDS`), the others fresh."""
    fields = {name: getattr(row, name) for name in REQUEUE_FIELDS}
    fields["job_id"] = job_id
    return NewJob(
        **fields,
        run_after=None,
        notify=False,
        enqueued_at=now,
        attempt_log=[] if row.attempt_log is not None else None,
    )
