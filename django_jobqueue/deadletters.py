"""Requeueing dead letters: run a quarantined job again, with its id and arguments.

One transaction per call. The dead letters are locked (``SELECT ... FOR UPDATE``; on SQLite
the transaction takes the write lock first), so two operators clicking "Requeue" at once
requeue each dead letter exactly once: the second finds it gone and does nothing.

For each dead letter, by the state of the job row with the same ``job_id``:

* none, or finished (completed, failed or cancelled): a fresh job row is queued (attempt 0,
  the fields the dead letter kept of its job, :data:`~django_jobqueue.base.REQUEUE_FIELDS`:
  name, queue, arguments, priority, group, ``max_attempts``, ``result_ttl``, ``time_limit``,
  limit key, trace context; enqueued now, to run at once, a task's attempt log started
  afresh), replacing the finished row and its result, and the dead letter is deleted;
  The children the job's failure cancelled (workflows, ``parent_failure="cancel"``) are
  "blocked" again, waiting for it (and theirs for them);
* queued or running (it was enqueued again meanwhile, or an earlier dead letter of the same id
  was just requeued): nothing happens to it, and the dead letter is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from . import conf
from .base import ACTIVE, REQUEUE_FIELDS, JobSnapshot, NewJob
from .handles import announce
from .models import DeadLetter, Job
from .querysets.dependencies import revive
from .routers import queue_database


@dataclass
class RequeueReport:
    """What :func:`requeue_report` did: ``requeued`` and ``skipped`` hold job ids.

    A dead letter that no longer exists (requeued or deleted by someone else meanwhile) is in
    neither list.
    """

    requeued: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def requeue(
    dead_letters: models.QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    using: str | None = None,
) -> int:
    """Requeue ``dead_letters`` (a queryset, instances or primary keys) in one transaction.

    Returns how many were requeued; a dead letter whose job is queued or running is skipped and
    kept. Workers of the jobs' queues are woken when the transaction commits.
    """
    return len(requeue_report(dead_letters, using=using).requeued)


def requeue_report(
    dead_letters: models.QuerySet[DeadLetter] | Iterable[DeadLetter | int],
    *,
    using: str | None = None,
) -> RequeueReport:
    """Like :func:`requeue`, but say which job ids were requeued and which were skipped."""
    if using is None:
        queryset_db = getattr(dead_letters, "_db", None)
        using = queryset_db or queue_database()
    report = RequeueReport()
    announced: list[JobSnapshot] = []
    letters_table = DeadLetter.objects.using(using)
    with transaction.atomic(using=using):
        write_lock_first(letters_table)  # a concurrent requeue waits here on SQLite
        pks = _primary_keys(dead_letters)
        if not pks:
            return report
        letters = list(letters_table.select_for_update().filter(pk__in=pks).order_by("pk"))
        if not letters:
            return report
        jobs = {
            job.job_id: job
            for job in Job.objects.using(using)
            .select_for_update()
            .filter(job_id__in={letter.job_id for letter in letters})
            .only("id", "job_id", "status")
            .order_by("pk")
        }
        now = timezone.now()
        rows: list[NewJob] = []
        chosen: list[DeadLetter] = []
        replace: list[int] = []
        taken: set[str] = set()
        for letter in letters:
            existing = jobs.get(letter.job_id)
            if letter.job_id in taken or (existing is not None and existing.status in ACTIVE):
                report.skipped.append(letter.job_id)
                continue
            if existing is not None:
                replace.append(existing.pk)
            taken.add(letter.job_id)
            chosen.append(letter)
            rows.append(_row(letter, now))
        if replace:
            # Finished rows only (they are locked, so still finished); results cascade.
            Job.objects.using(using).filter(pk__in=replace).delete()
        inserted = Job.objects.using(using).insert_new(rows) if rows else set()
        done = [letter for letter in chosen if letter.job_id in inserted]
        report.skipped.extend(letter.job_id for letter in chosen if letter.job_id not in inserted)
        if done:
            letters_table.filter(pk__in=[letter.pk for letter in done]).delete()
            report.requeued.extend(letter.job_id for letter in done)
            # Workflows: the children a dead-lettered parent cancelled wait for it again.
            revive(Job.objects.using(using)._sql(), report.requeued)
            announced = [JobSnapshot.of_new(row) for row in rows if row.job_id in inserted]
    if announced:
        # Written: workers are woken on commit, and a raising job_enqueued receiver is
        # logged, never turned into an error (the requeue is done).
        announce(announced, using=using)
    return report


def write_lock_first(queryset: models.QuerySet[Any]) -> None:
    """On SQLite, take the database's write lock now, with an UPDATE of no row of
    ``queryset``'s table: call it first in a transaction that reads, then writes. SQLite has no
    row locks, and a transaction that read before another connection committed cannot take
    the write lock later: it fails at once with "database is locked" (busy timeout or not).
    Taking it first, the transaction waits for the other one instead. Nothing elsewhere (row
    locks)."""
    if transaction.get_connection(queryset.db).vendor == "sqlite":
        pk = queryset.model._meta.pk.attname
        queryset.model._default_manager.using(queryset.db).filter(pk__lt=0).update(
            **{pk: models.F(pk)}
        )


def _primary_keys(
    dead_letters: models.QuerySet[DeadLetter] | Iterable[DeadLetter | int],
) -> list[int]:
    if isinstance(dead_letters, models.QuerySet):
        return list(dead_letters.order_by().values_list("pk", flat=True))
    return [item.pk if isinstance(item, DeadLetter) else int(item) for item in dead_letters]


def _row(letter: DeadLetter, now: datetime) -> NewJob:
    """The job ``letter`` kept, to write again: :data:`REQUEUE_FIELDS` copied, the
    :data:`~django_jobqueue.base.REQUEUE_FRESH_FIELDS` new."""
    fresh: dict[str, Any] = {
        "run_after": None,
        "notify": False,
        "enqueued_at": now,
        # A requeued task starts a fresh log: its attempts count from 0 again.
        "attempt_log": [] if letter.attempt_log is not None else None,
    }
    return NewJob(**{name: getattr(letter, name) for name in REQUEUE_FIELDS}, **fresh)


def prune(now: datetime, *, dry_run: bool = False, using: str | None = None) -> int | None:
    """Delete every dead letter past ``DEAD_LETTER_TTL`` or beyond ``DEAD_LETTER_MAX``
    (oldest first), in batches of ``PRUNE_BATCH``, each its own transaction; return how
    many (with ``dry_run``, how many would go), or None when both settings are None.
    The workers do the same as they prune finished jobs (``manage.py jobqueue prune``
    calls this, ``using`` each queue database)."""
    ttl, keep = conf.settings.DEAD_LETTER_TTL, conf.settings.DEAD_LETTER_MAX
    if ttl is None and keep is None:
        return None
    letters = DeadLetter.objects.using(using or queue_database())
    if dry_run:
        return int(letters.expired(now, ttl=ttl, keep=keep).count())
    batch, total = conf.settings.PRUNE_BATCH, 0
    while True:
        deleted = letters.prune(now, ttl=ttl, keep=keep, limit=batch)
        total += deleted
        if deleted < batch:
            return total
