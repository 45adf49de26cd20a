"""Request/response over the queue: subscribe, enqueue, wait for "finished", read the database.

A notification only says "look now" (or, for a small completed result, carries it signed
with ``SECRET_KEY``: a message without a valid signature is only a "look now"); the result
otherwise comes from the database, and the process's safety-net poll
(:mod:`django_jobqueue.notifications.safetynet`: one query per interval for every job the
process waits for, not one per waiter) reads it too, so a lost notification (or no channel
layer at all) makes an answer slower, never wrong or missing.

``enqueue_and_wait`` sends the join of the job's group *before* the INSERT and lets the two
overlap (the join is one Redis round trip, the INSERT a durable commit). If the join was
answered by the time the INSERT returned, it took effect before any worker could announce the
job: a worker is only woken after the commit, by a send the hub makes after the join, and
even a worker that finds the job by polling needs two more round trips to the database
before it can announce it. Lateness is judged the moment the INSERT has committed, before
the commit's callbacks and ``job_enqueued`` receivers run. If the join was answered later,
the waiter reads the job once more after it, so a job that finished in between is never
missed.

A waiter whose job is written rides out a lost database connection (PostgreSQL restarting,
a session killed): each of its reads that fails so closes the broken connection and tries
again on a new one, backing off from :data:`RETRY_FIRST` to :data:`RETRY_MAX` seconds, until
its own deadline (then ``JobTimeoutError``, from the last error). The enqueue itself is not
retried: if the row was never written, the error is raised as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)

from . import conf
from .base import JobState, Status
from .exceptions import JobCancelledError, JobFailedError, JobQueueError, JobTimeoutError
from .models import Job
from .notifications import AsyncWaiter, Subscription, ThreadWaiter, hub, runtime
from .options import check_timeout
from .routers import commits_first, in_user_atomic, queue_database, queue_databases

T = TypeVar("T")

logger = logging.getLogger("django_jobqueue.waiting")

#: ``enqueue(written, lock_timeout)``: write the job (calling ``written`` the moment it is
#: written) and return its state once announced (finished already when ``EAGER`` ran it).
#: Given by the caller, so waiting never imports upward.
Enqueue = Callable[[Callable[[], None], float | None], JobState]

#: What a lost connection raises.
_LOST = (OperationalError, InterfaceError)
#: Seconds before a waiter's first read again after a lost connection; the pause doubles
#: up to RETRY_MAX (a PostgreSQL restart takes a few seconds).
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
#: Seconds an async waiter's read may take at least, so a job that finished right at the
#: deadline still answers.
READ_GRACE = 0.25


def refuse_in_atomic(what: str) -> None:
    """Raise :class:`JobQueueError` if called inside ``transaction.atomic()``: the job would
    stay invisible to workers until the commit, so the wait could only time out."""
    using = queue_database()
    connection = transaction.get_connection(using)
    # The queue has a database of its own: enqueue() there waits for these to commit.
    others = commits_first(using)
    if others:
        connection = transaction.get_connection(others[0])
    elif not connection.in_atomic_block:
        return
    elif conf.settings.EAGER and not in_user_atomic(using):
        return  # only a TestCase's transaction: the job runs here, at once
    cause = ""
    if connection.settings_dict.get("ATOMIC_REQUESTS"):
        cause = (
            f" DATABASES[{connection.alias!r}]['ATOMIC_REQUESTS'] is True, so every view runs in a "
            "transaction: decorate this view with @transaction.non_atomic_requests."
        )
    raise JobQueueError(
        f"{what} cannot run inside transaction.atomic(): workers cannot see the job until "
        "the transaction commits, so the wait could only time out. Enqueue with .enqueue() "
        "and wait after the commit (transaction.on_commit), or call it outside the atomic "
        f"block.{cause} In tests, use TransactionTestCase or "
        "pytest.mark.django_db(transaction=True)."
    )


def resolve_timeout(value: float | None) -> float:
    """``value`` checked, or ``WAIT_TIMEOUT`` when it is None."""
    if value is None:
        return conf.settings.WAIT_TIMEOUT
    checked = check_timeout(value)
    assert checked is not None
    return checked


def outcome(job_id: str, state: JobState) -> Any:
    """The result of a finished job, or :class:`JobFailedError` /
    :class:`JobCancelledError`."""
    if state.status == Status.FAILED:
        raise JobFailedError(job_id, state.error)
    if state.status == Status.CANCELLED:
        raise JobCancelledError(job_id)
    return state.result


class _Wait:
    """One wait for one job: its deadline, its last known state, and how to give up."""

    __slots__ = ("deadline", "job_id", "queue", "state", "timeout")

    def __init__(self, job_id: str, queue: str, state: JobState | None, timeout: float) -> None:
        self.job_id = job_id
        self.queue = queue
        self.state = state
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def poll(self) -> None:
        """Read the job's state (one light query); a vanished row keeps the last state."""
        state = Job.objects.using(queue_database(self.queue)).state(self.job_id)
        if state is not None:
            self.state = state

    def subscribe_and_poll(self) -> None:
        """Mark the job as waited for, wake its queue again if the UPDATE may have hidden
        the job from a claiming worker, and read its state."""
        subscribed = Job.objects.using(queue_database(self.queue)).subscribe(self.job_id)
        if subscribed is not None and subscribed.ready_queue is not None:
            hub().wake_workers([subscribed.ready_queue])
        self.poll()

    def read(self, read: Callable[[], None]) -> None:
        """``read()`` (:meth:`poll`, :meth:`subscribe_and_poll`) in this thread, riding out a
        lost connection until the deadline (module docstring). Inside a transaction the
        connection cannot be replaced: the error is raised."""
        pause = RETRY_FIRST
        while True:
            try:
                read()
                return
            except _LOST as exc:
                if _in_transaction():
                    raise
                if self.remaining() <= 0:
                    raise self.timed_out() from exc
                _close_lost()
                self.lost(exc, pause)
            time.sleep(min(pause, max(0.0, self.remaining())))
            pause = min(2 * pause, RETRY_MAX)

    async def aread(self, read: Callable[[], None]) -> None:
        """Async twin of :meth:`read`: ``read()`` runs in a database thread (which closes
        its broken connection, :func:`_retrying`); no thread is held between tries."""
        pause = RETRY_FIRST
        while True:
            try:
                # A little grace, so a job that finished right at the deadline still answers.
                await asyncio.wait_for(_db(read), max(READ_GRACE, self.remaining()))
                return
            except TimeoutError:
                raise self.timed_out() from None
            except _LOST as exc:
                if self.remaining() <= 0:
                    raise self.timed_out() from exc
                self.lost(exc, pause)
            await asyncio.sleep(min(pause, max(0.0, self.remaining())))
            pause = min(2 * pause, RETRY_MAX)

    def lost(self, exc: BaseException, pause: float) -> None:
        logger.debug(
            "waiter of job %s: its read of the database failed (%s); reading again in %.2fs "
            "(%.1fs left)",
            self.job_id,
            str(exc).strip()[:200],
            pause,
            self.remaining(),
        )

    def timed_out(self) -> JobTimeoutError:
        status = self.state.status if self.state is not None else None
        if status == Status.QUEUED and self.state is not None and self.state.attempts:
            status = None  # queued for a retry: a worker did take it
        return JobTimeoutError(self.job_id, self.timeout, status=status, queue=self.queue)


def _aliases() -> set[str]:
    """The databases a waiter may read and write its job on: each queue database."""
    return set(queue_databases())


def _in_transaction() -> bool:
    return any(transaction.get_connection(alias).in_atomic_block for alias in _aliases())


def _close_lost() -> None:
    """Close this thread's connections to the job's database after a lost connection: the
    next read opens a new one."""
    for alias in _aliases():
        with suppress(DatabaseError):
            connections[alias].close()


# -- synchronous --------------------------------------------------------------------------


def _refuse_deferred_under_eager(job_id: str, state: JobState | None) -> None:
    """Raise :class:`JobQueueError` if, under ``EAGER``, the job is queued again after an
    attempt: it asked to run later (``Retry(after=...)``), which ``EAGER`` never does for it,
    so the wait could only time out."""
    if state is None or state.status != Status.QUEUED or not state.attempts:
        return
    if conf.settings.EAGER:
        raise JobQueueError(
            f"Job {job_id} was deferred by Retry(after=...) on attempt {state.attempts} "
            "and JOBQUEUE['EAGER'] does not run deferred jobs, so waiting for it would only "
            "time out: call django_jobqueue.testing.run_jobs() once it is due, or test it "
            "with a worker."
        )


def enqueue_and_wait(
    job_id: str, queue: str, enqueue: Enqueue, *, timeout: float, fixed_id: bool
) -> JobState:
    """Subscribe to ``job_id``, ``enqueue`` it, and wait for it to finish; its final state.

    The join of the job's group is sent first and overlaps the INSERT (module docstring).
    With a caller's ``fixed_id``, another transaction's uncommitted job of that id is waited
    for at most until the deadline (PostgreSQL's ``lock_timeout``). The caller checks
    :func:`refuse_in_atomic` first, naming the job.
    """
    wait = _Wait(job_id, queue, None, timeout)
    waiter = ThreadWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(job_id, waiter)
    net = runtime.safety_net
    token: int | None = None
    try:
        wait.state = _enqueue(wait, enqueue, subscription, fixed_id)
        if wait.finished:  # run by this thread meanwhile (EAGER), or a cached result
            return wait.state
        _refuse_deferred_under_eager(wait.job_id, wait.state)
        token = net.add(job_id, waiter.notify)
        subscription.confirm()
        if subscription.late and not wait.finished:
            wait.read(wait.poll)
        return _wait_loop(wait, waiter)
    finally:
        if token is not None:
            net.discard(job_id, token)
        notifier.unsubscribe(job_id, waiter)


def wait_for_job(job_id: str, queue: str, state: JobState, timeout: float) -> JobState:
    """Wait for the job ``job_id`` (last seen in ``state``) to finish; its final state."""
    if state.finished:
        return state
    refuse_in_atomic("JobHandle.wait()")
    wait = _Wait(job_id, queue, state, timeout)
    waiter = ThreadWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(job_id, waiter)
    net = runtime.safety_net
    token = net.add(job_id, waiter.notify)
    try:
        subscription.confirm()
        wait.read(wait.subscribe_and_poll)
        return _wait_loop(wait, waiter)
    finally:
        net.discard(job_id, token)
        notifier.unsubscribe(job_id, waiter)


def _enqueue(wait: _Wait, enqueue: Enqueue, subscription: Subscription, fixed_id: bool) -> JobState:
    lock_timeout = max(0.001, wait.remaining()) if fixed_id else None
    try:
        return enqueue(subscription.mark_written, lock_timeout)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            raise JobTimeoutError(wait.job_id, wait.timeout) from exc
        raise


def _wait_loop(wait: _Wait, waiter: ThreadWaiter) -> JobState:
    """Wait for the hub's "finished" (then read the job) or the safety-net poll (which
    brings the final state); at the deadline read the job once more, then give up."""
    while not wait.finished:
        remaining = wait.remaining()
        if not waiter.event.wait(max(0.0, remaining)):
            wait.read(wait.poll)  # the deadline: a job that finished right at it still answers
            if not wait.finished:
                raise wait.timed_out()
            break
        waiter.event.clear()
        if waiter.state is not None:
            wait.state = waiter.state
        else:
            wait.read(wait.poll)
    assert wait.state is not None
    return wait.state


# -- asynchronous -------------------------------------------------------------------------


def _db(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run ``function(*args)`` in one of the async waiters' database threads."""
    return asyncio.get_running_loop().run_in_executor(
        runtime.db_threads(), _retrying, function, *args
    )


def _retrying(function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in an executor thread whose connection persists between calls; on a
    broken connection reconnect and try once more (every call here is idempotent)."""
    try:
        return function(*args)
    except (OperationalError, InterfaceError):
        for connection in connections.all(initialized_only=True):
            connection.close()
        return function(*args)


async def _bounded(future: asyncio.Future[T], wait: _Wait) -> T:
    """Await a database call no longer than the wait's deadline."""
    try:
        return await asyncio.wait_for(future, max(0.0, wait.remaining()))
    except TimeoutError:
        raise wait.timed_out() from None


async def aenqueue_and_wait(
    job_id: str, queue: str, enqueue: Enqueue, *, timeout: float, fixed_id: bool
) -> JobState:
    """Async twin of :func:`enqueue_and_wait`: no thread or connection held while waiting."""
    wait = _Wait(job_id, queue, None, timeout)
    waiter = AsyncWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(job_id, waiter)  # overlaps the INSERT
    net = runtime.safety_net
    token: int | None = None
    try:
        wait.state = await _bounded(_db(_enqueue, wait, enqueue, subscription, fixed_id), wait)
        if wait.finished:
            return wait.state
        _refuse_deferred_under_eager(wait.job_id, wait.state)
        token = net.add(job_id, waiter.notify)
        await subscription.aconfirm()
        if subscription.late and not wait.finished:
            await wait.aread(wait.poll)
        return await _await_loop(wait, waiter)
    finally:
        if token is not None:
            net.discard(job_id, token)
        notifier.unsubscribe(job_id, waiter)


async def await_job(job_id: str, queue: str, state: JobState, timeout: float) -> JobState:
    """Async twin of :func:`wait_for_job`."""
    if state.finished:
        return state
    wait = _Wait(job_id, queue, state, timeout)
    waiter = AsyncWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(job_id, waiter)
    net = runtime.safety_net
    token = net.add(job_id, waiter.notify)
    try:
        await subscription.aconfirm()
        await wait.aread(wait.subscribe_and_poll)
        return await _await_loop(wait, waiter)
    finally:
        net.discard(job_id, token)
        notifier.unsubscribe(job_id, waiter)


async def _await_loop(wait: _Wait, waiter: AsyncWaiter) -> JobState:
    """Async twin of :func:`_wait_loop`."""
    while not wait.finished:
        try:
            await asyncio.wait_for(waiter.event.wait(), max(0.0, wait.remaining()))
        except TimeoutError:
            pass  # the deadline: read the job once more below, then give up
        else:
            waiter.event.clear()
            if waiter.state is not None:
                wait.state = waiter.state
                continue
        await wait.aread(wait.poll)
        if not wait.finished and wait.remaining() <= 0:
            raise wait.timed_out()
    assert wait.state is not None
    return wait.state


__all__ = [
    "Enqueue",
    "aenqueue_and_wait",
    "await_job",
    "enqueue_and_wait",
    "outcome",
    "refuse_in_atomic",
    "resolve_timeout",
    "wait_for_job",
]
