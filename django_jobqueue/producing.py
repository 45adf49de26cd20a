"""Putting jobs in the queue: one INSERT per batch, deduplicated by job id.

The deduplication table of the design, enqueue side: an id that is queued or running, or
finished within its ``result_ttl``, is not run again (the caller gets a handle to it); an id
finished past its ``result_ttl`` is replaced by a new run. ``on_duplicate`` changes what an
existing id gets (docs/guide/uniqueness.md):

* ``"return"`` (the default): the table above;
* ``"replace"``: a queued job takes the new call's arguments, ``run_after`` and priority in
  place (one ``UPDATE ... WHERE status = 'queued'``: a debounce); one that is no longer
  queued is treated as ``"rerun"``;
* ``"rerun"``: a finished job, whatever its ``result_ttl``, is deleted and written again as a
  new run; a queued one is returned; a running one gets one more run, pending on its row
  (``Job.rerun``: the call's arguments and priority; at most one: later calls return the
  job as it is), which a worker queues once the run has finished (:func:`start_reruns`).

Every case runs in the transaction that inserts, and an INSERT that loses a race to another
producer resolves again (:data:`_REPLACE_ROUNDS`), so concurrent producers of one id write
one run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import datetime
from itertools import groupby

from django.db import transaction
from django.utils import timezone

from . import propagation, telemetry
from .base import ACTIVE, FINISHED, NEW_JOB_COLUMNS, JobSnapshot, NewJob, Status
from .exceptions import InvalidJobError, JobQueueError
from .models import Job
from .querysets import INSERT_BATCH
from .querysets.batches import join
from .querysets.dependencies import adopt, attach
from .routers import database_for, main_database, queue_aliases, queue_database, routed

_REPLACE_ROUNDS = 5
#: PostgreSQL's largest lock_timeout (INT_MAX milliseconds, about 24.8 days).
_LOCK_TIMEOUT_MAX_MS = 2**31 - 1


def new_job_id() -> str:
    return new_job_ids(1)[0]


def new_job_ids(count: int) -> list[str]:
    """``count`` fresh ids, each like ``uuid.uuid4().hex``, from one call to the OS's random
    source (a bulk enqueue would otherwise spend a sixth of its time making ids)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = bytes(byte & 0x0F | 0x40 for byte in raw[6::16])  # version 4
    raw[8::16] = bytes(byte & 0x3F | 0x80 for byte in raw[8::16])  # RFC 4122 variant
    text = raw.hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]


#: The batch that the jobs enqueued here join (``with batch(...)``), if any.
current_batch: ContextVar[str | None] = ContextVar("django_jobqueue_batch", default=None)


def insert_jobs(
    jobs: Sequence[NewJob],
    *,
    notify: bool = False,
    lock_timeout: float | None = None,
    written: Callable[[], None] | None = None,
    on_duplicate: str = "return",
) -> list[JobSnapshot]:
    """Insert ``jobs`` and return one snapshot per job, in order (``created`` says which);
    ``on_duplicate`` says what a job whose id exists gets (the module's docstring).

    With ``notify`` the jobs are marked as waited for, including existing active ones. One
    INSERT, in autocommit, is the common case; more statements (several batches, or ids to
    resolve against existing jobs) run in one transaction, so a failure writes nothing.
    ``lock_timeout`` (seconds, PostgreSQL) bounds the wait for another transaction's
    uncommitted job with the same id. Inside ``with batch(...)`` the new jobs join it, in the
    same transaction. ``written`` is called once the rows are written
    (committed, outside a transaction). Waking workers and ``job_enqueued`` are the caller's
    (:func:`django_jobqueue.handles.announce`), after this returns.

    With tracing on (:mod:`.telemetry`) the write is a PRODUCER span; the ``JOBQUEUE["CONTEXT"]``
    classes captured at write (the trace context) are captured inside it.
    """
    batch_id = current_batch.get()
    with telemetry.enqueue_span(jobs), routed(database_for(job.queue for job in jobs)):
        using = queue_database()
        traced = propagation.stamped(jobs)
        if batch_id is None:
            return _insert_jobs(
                traced,
                using,
                notify=notify,
                lock_timeout=lock_timeout,
                written=written,
                on_duplicate=on_duplicate,
            )
        if queue_aliases() and using != main_database():
            raise InvalidJobError(
                f"with batch(...) holds jobs of the main database only, and these jobs' "
                f"queue is on {using!r} (JOBQUEUE['QUEUES']): enqueue them outside the batch. "
                "Nothing was written."
            )
        with transaction.atomic(using=using):  # the jobs and their joining: both or neither
            snapshots = _insert_jobs(
                traced,
                using,
                notify=notify,
                lock_timeout=lock_timeout,
                written=None,
                on_duplicate=on_duplicate,
            )
            created = [snapshot.id for snapshot in snapshots if snapshot.created]
            if created:
                join(Job.objects.using(using)._sql(), batch_id, created)
    if written is not None:
        written()
    return snapshots


def _insert_jobs(
    jobs: Sequence[NewJob],
    using: str,
    *,
    notify: bool,
    lock_timeout: float | None,
    written: Callable[[], None] | None,
    on_duplicate: str,
) -> list[JobSnapshot]:
    fast = len(jobs) <= INSERT_BATCH and lock_timeout is None
    found = _insert(jobs, using) if fast else {}
    pending = [job for job in jobs if job.job_id not in found]
    if not (fast and not pending):
        with transaction.atomic(using=using):
            Job.objects.using(using).lock_for_writing()
            if lock_timeout is not None and transaction.get_connection(using).vendor == (
                "postgresql"
            ):
                with transaction.get_connection(using).cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('lock_timeout', %s, true)",
                        [f"{min(_LOCK_TIMEOUT_MAX_MS, max(1, int(lock_timeout * 1000)))}ms"],
                    )
            if not fast:
                found = _insert(jobs, using)
                pending = [job for job in jobs if job.job_id not in found]
            now = timezone.now()
            for _round in range(_REPLACE_ROUNDS):
                if not pending:
                    break
                pending = _resolve_existing(
                    pending, found, using=using, notify=notify, now=now, on_duplicate=on_duplicate
                )
                if pending:
                    found.update(_insert(pending, using))
                    pending = [job for job in pending if job.job_id not in found]
            if pending:
                raise JobQueueError(
                    f"Could not enqueue {len(pending)} job(s) after {_REPLACE_ROUNDS} "
                    "attempts: their ids kept being replaced by concurrent producers. "
                    "Nothing was written."
                )
    if written is not None:
        written()
    return [found[job.job_id] for job in jobs]


#: One job of a workflow to write: the job, its parents' ids (maybe none) and its
#: ``parent_failure``.
Step = tuple[NewJob, Sequence[str], str]


def insert_steps(
    steps: Sequence[Step],
    *,
    notify: bool = False,
    written: Callable[[], None] | None = None,
) -> list[JobSnapshot]:
    """Insert the jobs of ``steps`` in order, in one transaction (a savepoint inside the
    caller's): each job with parents waits for them (:mod:`.querysets.dependencies`), and a
    parent may be a job written by an earlier step. Parents must exist already (so a cycle
    cannot be made): an unknown one raises :class:`InvalidJobError` and nothing is written.
    One snapshot per step, in order; a job that existed already (deduplication) is left as
    it is, its parents are not added to it."""
    with routed(database_for(step[0].queue for step in steps)):
        return _insert_steps(steps, notify=notify, written=written)


def _insert_steps(
    steps: Sequence[Step], *, notify: bool, written: Callable[[], None] | None
) -> list[JobSnapshot]:
    using = queue_database()
    sql = Job.objects.using(using)._sql()
    snapshots: list[JobSnapshot] = []
    now = timezone.now()
    with transaction.atomic(using=using):
        # Steps in a row with the same parents (enqueue_many, a group) are written together.
        for (parents, parent_failure), run in groupby(steps, key=lambda step: step[1:]):
            jobs = [new for new, _parents, _failure in run]
            found = adopt(sql, parents) if parents else {}
            missing = [parent for parent in parents if parent not in found]
            if missing:
                raise InvalidJobError(
                    f"after= names {len(missing)} job(s) that do not exist: "
                    f"{', '.join(map(repr, missing[:5]))}. Enqueue a parent before its "
                    "children (its handle or id), and check the id"
                    + (
                        f" (on {using!r}: a parent and its children must be on one database, "
                        "JOBQUEUE['QUEUES'])"
                        if queue_aliases()
                        else ""
                    )
                    + ". Nothing was written."
                )
            written_now = insert_jobs(jobs, notify=notify)
            created = [job for job, snap in zip(jobs, written_now, strict=True) if snap.created]
            if parents and created:
                status = attach(sql, created, found, parent_failure, now)
                for snapshot in written_now:
                    if snapshot.created:
                        snapshot.status = status
            snapshots += written_now
    if written is not None:
        written()
    return snapshots


def _insert(jobs: Sequence[NewJob], using: str) -> dict[str, JobSnapshot]:
    """Insert what is new; a snapshot for each job inserted, by job id."""
    inserted = Job.objects.using(using).insert_new(jobs)
    return {job.job_id: JobSnapshot.of_new(job) for job in jobs if job.job_id in inserted}


def _resolve_existing(
    jobs: list[NewJob],
    found: dict[str, JobSnapshot],
    *,
    using: str,
    notify: bool,
    now: datetime,
    on_duplicate: str = "return",
) -> list[NewJob]:
    """Hand out existing jobs (``"replace"``: updated in place); delete the expired ones (and
    with ``"rerun"`` the finished ones) and return their rows to insert again."""
    existing = {
        job.job_id: job
        for job in Job.objects.using(using)
        .select_related("outcome")
        .filter(job_id__in=[new.job_id for new in jobs])
    }
    again: list[NewJob] = []
    expired: list[int] = []
    for new in jobs:
        job = existing.get(new.job_id)
        if job is None:  # pruned or replaced between our INSERT and SELECT
            again.append(new)
        elif job.is_expired(now) or (on_duplicate != "return" and job.status in FINISHED):
            expired.append(job.pk)
            again.append(new)
        elif on_duplicate != "return" and job.status == Status.RUNNING:
            if not _pend(job.pk, new, using):
                job.refresh_from_db(using=using)
                if job.status in FINISHED:  # it finished meanwhile: run it again
                    again.append(new)
                    continue
            found[new.job_id] = job.snapshot()
        elif on_duplicate == "replace" and job.status == Status.QUEUED:
            if not _replace(job.pk, new, using):
                again.append(new)  # claimed meanwhile: its run is left, ours follows it
                continue
            job.refresh_from_db(using=using)
            found[new.job_id] = job.snapshot()
        else:
            subscribe = notify and job.status in ACTIVE and not job.notify
            if subscribe and Job.objects.using(using).subscribe(job.job_id) is None:
                job.refresh_from_db(using=using)  # it finished meanwhile
            found[new.job_id] = job.snapshot()
    if expired:
        Job.objects.using(using).filter(pk__in=expired, status__in=FINISHED).delete()
    return again


def _replace(pk: int, new: NewJob, using: str) -> bool:
    """``"replace"``: a queued job takes ``new``'s arguments, ``run_after`` and priority."""
    replaced = Job.objects.using(using).filter(pk=pk, status=Status.QUEUED)
    return bool(
        replaced.update(
            args=new.args, kwargs=new.kwargs, run_after=new.run_after, priority=new.priority
        )
    )


def _pend(pk: int, new: NewJob, using: str) -> bool:
    """``"rerun"`` of a running job: one more run, with ``new``'s arguments and priority, to
    queue once this one has finished; False if one is pending already or it is not running."""
    pending = Job.objects.using(using).filter(pk=pk, status=Status.RUNNING, rerun__isnull=True)
    rerun = {"args": new.args, "kwargs": new.kwargs, "priority": new.priority}
    return bool(pending.update(rerun=rerun))


#: Pending reruns queued per :func:`start_reruns` call.
RERUN_BATCH = 100


def start_reruns(using: str, *, limit: int = RERUN_BATCH) -> list[JobSnapshot]:
    """Queue the pending run (``Job.rerun``) of finished jobs: each finished row is replaced
    by a new run of the same id, with the pending arguments and priority and the job's other
    fields, in one transaction (the row is read ``SKIP LOCKED`` on PostgreSQL, under the
    write lock on SQLite, so two workers never queue one twice). The worker calls it with
    its upkeep; announce the snapshots returned (``handles.announce``)."""
    jobs = Job.objects.using(using)
    pending = jobs.filter(status__in=FINISHED, rerun__isnull=False)
    if not pending.exists():  # the common case: one read of an empty index, no lock
        return []
    with transaction.atomic(using=using):
        jobs.lock_for_writing()
        rows = pending.order_by("id")
        if transaction.get_connection(using).features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        finished = list(rows[:limit])
        if not finished:
            return []
        now = timezone.now()
        runs = [_next_run(row, now) for row in finished]
        jobs.filter(pk__in=[row.pk for row in finished]).delete()
        inserted = jobs.insert_new(runs)
    return [JobSnapshot.of_new(run) for run in runs if run.job_id in inserted]


def _next_run(row: Job, now: datetime) -> NewJob:
    """The pending run of the finished ``row``: its job's fields, the pending arguments."""
    fields = {name: getattr(row, name) for name in NEW_JOB_COLUMNS}
    fields.update(row.rerun or {}, run_after=None, notify=False, enqueued_at=now)
    if fields["attempt_log"] is not None:
        fields["attempt_log"] = []
    return NewJob(**fields)
