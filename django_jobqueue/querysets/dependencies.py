"""Following up the jobs that ended (workflows), inside the ending's transaction: releasing
their children, and counting them in their batch (:mod:`.batches`).

Called by every statement that records an ending, only for jobs whose row says
``has_children`` or names a batch (so a plain job never pays a statement for it), in the
same transaction; on commit, :data:`ANNOUNCERS` wake the workers of what it queued:

* a parent that **completed** takes one off each blocked child's ``waiting_for``; a child
  at zero moves ``blocked -> queued``;
* a parent that ended **failed or cancelled** does the same to children with
  ``parent_failure = 'run'``, and ends those with ``'cancel'`` cancelled, with an error that
  names the parent (:data:`CANCELLED_BY`); their own children follow, level by level.

``waiting_for`` is a counter on the child row, decremented by an ``UPDATE`` of that row: two
parents ending at the same moment in two transactions take turns on the row's lock, so the
last one always sees the other's decrement (a "are all the parents done?" read would not: each
would see the other still running). Each parent ends once (every ending is fenced), so each
decrement happens once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import transaction

from ..base import ACTIVE, NewJob, Status
from .batches import Released, batch_table, count_in_batches, finish
from .sql import _SQL

#: The error of a child cancelled because a parent did not complete; requeueing that parent
#: finds its children by it (and puts them back to "blocked").
CANCELLED_BY = "Cancelled: its parent job {} did not complete (parent_failure='cancel')."


#: Rows per statement when many children are attached at once.
_CHUNK = 500

#: What an ending statement returns (after its own columns) for :func:`ended`.
ENDED_COLUMNS = "has_children, job_id, batch_id"
#: The rows whose ending has no follower: recorded alone, in autocommit, outside a
#: transaction (the others are recorded again inside one, with their followers).
PLAIN = "NOT has_children AND batch_id IS NULL"
FOLLOWED = "(has_children OR batch_id IS NOT NULL)"


class Ended(NamedTuple):
    """A job that just ended: its followers are its children and its batch."""

    job_id: str
    status: str
    has_children: bool
    batch_id: str | None

    @property
    def followed(self) -> bool:
        return self.has_children or self.batch_id is not None


def ended(row: Sequence[Any]) -> Ended:
    """``(id, notify, status, *ENDED_COLUMNS)`` as an :class:`Ended`."""
    return Ended(str(row[4]), str(row[2]), bool(row[3]), row[5])


#: Called with what a release did once its transaction commits (the notification hub
#: registers itself here: this floor cannot import it): wake workers, notify waiters.
ANNOUNCERS: list[Callable[[Released], None]] = []


def _announce(released: Released) -> None:
    for announcer in ANNOUNCERS:
        announcer(released)


def dependency_table(sql: _SQL) -> str:
    model = sql.model._meta.apps.get_model(sql.model._meta.app_label, "JobDependency")
    return str(sql.connection.ops.quote_name(model._meta.db_table))


def release_children(sql: _SQL, endings: Sequence[Ended], now: datetime) -> Released:
    """Follow up the jobs that just ended (``endings``): release their children (see the
    module's docstring) and count them in their batches (:func:`count_in_batches`). Runs in
    the caller's transaction, which records the endings."""
    released = Released()
    parents = [end for end in endings if end.has_children]
    completed = [end.job_id for end in parents if end.status == Status.COMPLETED]
    if completed:
        _count_down(sql, completed, None, released)
    failed = [end.job_id for end in parents if end.status != Status.COMPLETED]
    counted = [end for end in endings if end.batch_id is not None]
    while failed:
        _count_down(sql, failed, "run", released)
        failed = _cancel_children(sql, failed, now, released, counted)
    if counted:
        count_in_batches(sql, [(str(end.batch_id), end.status) for end in counted], now, released)
    if released:
        transaction.on_commit(lambda: _announce(released), using=sql.connection.alias)
    return released


def _count_down(sql: _SQL, parents: list[str], policy: str | None, released: Released) -> None:
    """One less parent to wait for, for each blocked child of ``parents`` (with ``policy``
    only, if given); those at zero are queued."""
    deps = dependency_table(sql)
    marks = ", ".join(["%s"] * len(parents))
    gone = (
        f"(SELECT count(*) FROM {deps} d WHERE d.child_id = {sql.table}.id "
        f"AND d.parent_job_id IN ({marks}))"
    )
    only = "AND parent_failure = %s " if policy else ""
    rows = sql.execute(
        f"UPDATE {sql.table} SET waiting_for = CASE WHEN waiting_for > {gone} "
        f"THEN waiting_for - {gone} ELSE 0 END, "
        f"status = CASE WHEN waiting_for > {gone} THEN status ELSE %s END "
        f"WHERE status = %s {only}AND id IN "
        f"(SELECT child_id FROM {deps} WHERE parent_job_id IN ({marks})) "
        "RETURNING status, queue, job_id",
        [
            *parents,
            *parents,
            *parents,
            Status.QUEUED,
            Status.BLOCKED,
            *([policy] if policy else []),
            *parents,
        ],
    )
    for status, queue, job_id in rows:
        if status == Status.QUEUED:
            released.queues.add(str(queue))
            released.queued.append(str(job_id))


def _cancel_children(
    sql: _SQL, parents: list[str], now: datetime, released: Released, counted: list[Ended]
) -> list[str]:
    """End the blocked children of ``parents`` with ``parent_failure='cancel'`` cancelled
    (those of a batch join ``counted``); return those that have children of their own (the
    next level)."""
    deps = dependency_table(sql)
    marks = ", ".join(["%s"] * len(parents))
    rows = sql.execute(
        f"SELECT j.id, j.result_ttl, min(d.parent_job_id) "
        f"FROM {sql.table} j JOIN {deps} d ON d.child_id = j.id "
        f"WHERE d.parent_job_id IN ({marks}) AND j.status = %s AND j.parent_failure = %s "
        "GROUP BY j.id, j.result_ttl",
        [*parents, Status.BLOCKED, "cancel"],
    )
    chosen: dict[tuple[int, str], list[int]] = {}
    for pk, ttl, parent in rows:
        chosen.setdefault((int(ttl), str(parent)), []).append(pk)
    nested: list[str] = []
    for (ttl, parent), pks in chosen.items():
        ids = ", ".join(["%s"] * len(pks))
        # Still blocked under the row lock: a child queued or cancelled meanwhile is left.
        done = sql.execute(
            f"UPDATE {sql.table} SET status = %s, finished_at = %s, expires_at = %s, "
            f"last_error = %s, waiting_for = 0 WHERE id IN ({ids}) AND status = %s "
            "RETURNING job_id, notify, has_children, batch_id",
            [
                Status.CANCELLED,
                sql.prep("finished_at", now),
                sql.prep("expires_at", now + timedelta(seconds=ttl)),
                CANCELLED_BY.format(parent),
                *pks,
                Status.BLOCKED,
            ],
        )
        for job_id, notify, has_children, batch_id in done:
            if notify:
                released.finished.append(str(job_id))
            if has_children:
                nested.append(str(job_id))
            if batch_id is not None:
                counted.append(Ended(str(job_id), Status.CANCELLED, bool(has_children), batch_id))
    return nested


def adopt(sql: _SQL, parents: Sequence[str]) -> dict[str, str]:
    """Mark ``parents`` (job ids) as having children, locking their rows until the caller's
    transaction ends (so none of them ends unseen meanwhile); ``{job id: status}`` of those
    that exist."""
    marks = ", ".join(["%s"] * len(parents))
    rows = sql.execute(
        f"UPDATE {sql.table} SET has_children = %s WHERE job_id IN ({marks}) "
        "RETURNING job_id, status",
        [True, *parents],
    )
    return {str(job_id): str(status) for job_id, status in rows}


def attach(
    sql: _SQL,
    children: Sequence[NewJob],
    parents: dict[str, str],
    parent_failure: str,
    now: datetime,
) -> str:
    """Make the new jobs ``children`` wait for ``parents`` (``{job id: status}``, from
    :func:`adopt`, in the same transaction); return their status.

    A parent that completed counts as done; one that failed or was cancelled applies
    ``parent_failure`` at once ("cancel": the children end cancelled, naming it; "run":
    done); the others are waited for: the children are "blocked" while any is, "queued"
    otherwise. A few statements, however many children.
    """
    ended = [p for p, status in parents.items() if status in (Status.FAILED, Status.CANCELLED)]
    waiting = sum(1 for status in parents.values() if status in ACTIVE)
    cancel = bool(ended) and parent_failure == "cancel"
    if cancel:
        status = Status.CANCELLED.value
    else:
        status = Status.BLOCKED.value if waiting else Status.QUEUED.value
    by_ttl: dict[int, list[str]] = {}
    for child in children:
        by_ttl.setdefault(child.result_ttl if cancel else 0, []).append(child.job_id)
    pks: list[int] = []
    counted: list[tuple[str, str]] = []
    for ttl, job_ids in by_ttl.items():
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]
            extra, params = "", []
            if cancel:
                extra = ", finished_at = %s, expires_at = %s, last_error = %s"
                params = [
                    sql.prep("finished_at", now),
                    sql.prep("expires_at", now + timedelta(seconds=ttl)),
                    CANCELLED_BY.format(ended[0]),
                ]
            marks = ", ".join(["%s"] * len(chunk))
            rows = sql.execute(
                f"UPDATE {sql.table} SET status = %s, waiting_for = %s, "
                f"parent_failure = %s{extra} WHERE job_id IN ({marks}) RETURNING id, batch_id",
                [status, 0 if cancel else waiting, parent_failure, *params, *chunk],
            )
            pks += [pk for pk, _batch in rows]
            if cancel:  # ended at once: counted in their batch now
                counted += [(str(batch), status) for _pk, batch in rows if batch is not None]
    deps = dependency_table(sql)
    links = [(pk, parent) for pk in pks for parent in parents]
    for start in range(0, len(links), _CHUNK):
        chunk_links = links[start : start + _CHUNK]
        sql.execute(
            f"INSERT INTO {deps} (child_id, parent_job_id) VALUES "
            + ", ".join(["(%s, %s)"] * len(chunk_links)),
            [value for link in chunk_links for value in link],
        )
    if counted:
        released = Released()
        count_in_batches(sql, counted, now, released)
        if released:
            transaction.on_commit(lambda: _announce(released), using=sql.connection.alias)
    return status


def revive(sql: _SQL, parents: Sequence[str]) -> None:
    """``parents`` (job ids) were just written again (a dead letter requeued): mark their
    new rows as having children, and put the children they cancelled (:data:`CANCELLED_BY`)
    back to "blocked", waiting for their parents that have not ended, and theirs in turn."""
    if not parents:
        return
    deps = dependency_table(sql)
    marks = ", ".join(["%s"] * len(parents))
    sql.execute(
        f"UPDATE {sql.table} SET has_children = %s WHERE job_id IN ({marks}) AND EXISTS "
        f"(SELECT 1 FROM {deps} d WHERE d.parent_job_id = {sql.table}.job_id)",
        [True, *parents],
    )
    active = ", ".join(["%s"] * len(ACTIVE))
    level = list(parents)
    while level:
        following: list[str] = []
        for parent in level:
            rows = sql.execute(
                f"UPDATE {sql.table} SET status = %s, finished_at = NULL, expires_at = NULL, "
                f"last_error = '', waiting_for = (SELECT count(*) FROM {deps} d "
                f"JOIN {sql.table} p ON p.job_id = d.parent_job_id "
                f"WHERE d.child_id = {sql.table}.id AND p.status IN ({active})) "
                f"WHERE status = %s AND last_error = %s AND id IN "
                f"(SELECT child_id FROM {deps} WHERE parent_job_id = %s) "
                "RETURNING job_id, has_children",
                [
                    Status.BLOCKED,
                    *ACTIVE,
                    Status.CANCELLED,
                    CANCELLED_BY.format(parent),
                    parent,
                ],
            )
            following.extend(str(job_id) for job_id, has_children in rows if has_children)
        level = following


def seal(sql: _SQL, batch_id: str, now: datetime) -> None:
    """No job joins ``batch_id`` any more: if every job of it ended already, its callbacks
    are enqueued now (in the caller's transaction), else by its last job's ending."""
    sql.execute(f"UPDATE {batch_table(sql)} SET sealed = %s WHERE id = %s", [True, batch_id])
    released = Released()
    finish(sql, batch_id, now, released)
    if released:
        transaction.on_commit(lambda: _announce(released), using=sql.connection.alias)
