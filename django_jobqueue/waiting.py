"""Request/response over the queue: subscribe, enqueue, wait for "finished", read the database.

A notification only says "look now"; the result always comes from the database, and the
database is also polled every ``POLL_INTERVAL`` seconds, so a lost notification (or no
channel layer at all) makes an answer slower, never wrong or missing.

``enqueue_and_wait`` sends the join of the job's group *before* the INSERT and lets the two
overlap (the join is one Redis round trip, the INSERT a durable commit). If the join was
answered by the time the INSERT returned, it took effect before any worker could announce the
job: a worker is only woken after the commit, by a send the hub makes after the join, and
even a worker that finds the job by polling needs two more round trips to the database
before it can announce it. Lateness is judged the moment the INSERT has committed, before
the commit's callbacks and ``job_enqueued`` receivers run. If the join was answered later,
the waiter reads the job once more after it, so a job that finished in between is never
missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.utils import timezone

from . import conf
from .exceptions import JobFailedError, JobQueueError, JobTimeoutError
from .handles import JobHandle
from .models import Job
from .notifications import AsyncWaiter, Subscription, ThreadWaiter, hub
from .options import check_timeout
from .producing import enqueue_rows

if TYPE_CHECKING:
    from .decorators import JobFunction

T = TypeVar("T")

#: Async waiters run their few short queries here, so hundreds of them share a handful of
#: database connections instead of holding one each while they wait.
_DB_THREADS = 4
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _refuse_in_atomic(what: str) -> None:
    using = router.db_for_write(Job)
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        return
    cause = ""
    if connection.settings_dict.get("ATOMIC_REQUESTS"):
        cause = (
            f" DATABASES[{using!r}]['ATOMIC_REQUESTS'] is True, so every view runs in a "
            "transaction: decorate this view with @transaction.non_atomic_requests."
        )
    raise JobQueueError(
        f"{what} cannot run inside transaction.atomic(): workers cannot see the job until "
        "the transaction commits, so the wait could only time out. Enqueue with .enqueue() "
        "and wait after the commit (transaction.on_commit), or call it outside the atomic "
        f"block.{cause} In tests, use TransactionTestCase or "
        "pytest.mark.django_db(transaction=True)."
    )


def _timeout(value: float | None) -> float:
    if value is None:
        return float(conf.get("WAIT_TIMEOUT"))
    checked = check_timeout(value)
    assert checked is not None
    return checked


def _outcome(handle: JobHandle) -> Any:
    if handle.status == "failed":
        raise JobFailedError(handle.id, handle.error)
    return handle.result


def _poll_interval(remaining: float) -> float:
    return max(0.0, min(remaining, float(conf.get("POLL_INTERVAL"))))


# -- synchronous --------------------------------------------------------------------------


def enqueue_and_wait(
    job: JobFunction[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    _refuse_in_atomic(f"{job.name}.enqueue_and_wait()")
    timeout = _timeout(job.timeout)
    deadline = time.monotonic() + timeout
    row = job._row(args, kwargs, timezone.now(), notify=True)
    waiter = ThreadWaiter()
    notifier = hub()
    # The join of the job's group is sent first and overlaps the INSERT (module docstring).
    subscription = notifier.start_subscribe(row["job_id"], waiter)
    try:
        handle = _enqueue(row, job, deadline, timeout, subscription)
        subscription.confirm()
        if subscription.late and not handle.finished:
            handle._poll()
        return _wait_loop(handle, waiter, deadline, timeout)
    finally:
        notifier.unsubscribe(row["job_id"], waiter)


def wait_for_job(handle: JobHandle, timeout: float | None) -> Any:
    timeout = _timeout(timeout)
    if handle.finished:
        return _outcome(handle)
    _refuse_in_atomic("JobHandle.wait()")
    deadline = time.monotonic() + timeout
    waiter = ThreadWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(handle.id, waiter)
    try:
        subscription.confirm()
        Job.objects.subscribe(handle.id)
        handle._poll()
        return _wait_loop(handle, waiter, deadline, timeout)
    finally:
        notifier.unsubscribe(handle.id, waiter)


def _enqueue(
    row: dict[str, Any],
    job: JobFunction[Any, Any],
    deadline: float,
    timeout: float,
    subscription: Subscription,
) -> JobHandle:
    """Enqueue (or join) the run; with a caller's job id, another transaction's uncommitted
    job of that id is waited for at most until the deadline (PostgreSQL's lock_timeout)."""
    lock_timeout = max(0.001, deadline - time.monotonic()) if job.job_id else None
    try:
        return enqueue_rows(
            [row], notify=True, lock_timeout=lock_timeout, written=subscription.mark_written
        )[0]
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            raise JobTimeoutError(row["job_id"], timeout) from exc
        raise


async def _bounded(
    future: asyncio.Future[T], row: dict[str, Any], deadline: float, timeout: float
) -> T:
    """Await a database call no longer than the wait's deadline."""
    try:
        return await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise JobTimeoutError(row["job_id"], timeout) from None


def _wait_loop(handle: JobHandle, waiter: ThreadWaiter, deadline: float, timeout: float) -> Any:
    while not handle.finished:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeoutError(handle.id, timeout)
        waiter.event.wait(_poll_interval(remaining))
        waiter.event.clear()
        handle._poll()
    return _outcome(handle)


# -- asynchronous -------------------------------------------------------------------------


def _db(function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():  # new, or inherited through fork()
        _executor = ThreadPoolExecutor(_DB_THREADS, thread_name_prefix="django-jobqueue-db")
        _executor_pid = os.getpid()
    return asyncio.get_running_loop().run_in_executor(_executor, _retrying, function, *args)


def close_db_threads() -> None:
    """Close the connections of the async waiters' threads and stop them (tests, shutdown)."""
    global _executor
    executor, _executor = _executor, None
    if executor is None:
        return
    import threading

    everyone = threading.Barrier(_DB_THREADS)

    def close() -> None:
        everyone.wait(timeout=5)
        connections.close_all()

    for future in [executor.submit(close) for _ in range(_DB_THREADS)]:
        future.result(timeout=10)
    executor.shutdown(wait=True)


def _retrying(function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` in an executor thread whose connection persists between calls; on a
    broken connection reconnect and try once more (every call here is idempotent)."""
    try:
        return function(*args)
    except (OperationalError, InterfaceError):
        for connection in connections.all(initialized_only=True):
            connection.close()
        return function(*args)


async def aenqueue_and_wait(
    job: JobFunction[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    timeout = _timeout(job.timeout)
    deadline = time.monotonic() + timeout
    row = job._row(args, kwargs, timezone.now(), notify=True)
    waiter = AsyncWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(row["job_id"], waiter)  # overlaps the INSERT
    try:
        handle = await _bounded(
            _db(_enqueue, row, job, deadline, timeout, subscription), row, deadline, timeout
        )
        await subscription.aconfirm()
        if subscription.late and not handle.finished:
            await _bounded(_db(handle._poll), row, deadline, timeout)
        return await _await_loop(handle, waiter, deadline, timeout)
    finally:
        notifier.unsubscribe(row["job_id"], waiter)


def _subscribe_and_refresh(handle: JobHandle) -> JobHandle:
    Job.objects.subscribe(handle.id)
    return handle._poll()


async def await_job(handle: JobHandle, timeout: float | None) -> Any:
    timeout = _timeout(timeout)
    if handle.finished:
        return _outcome(handle)
    deadline = time.monotonic() + timeout
    waiter = AsyncWaiter()
    notifier = hub()
    subscription = notifier.start_subscribe(handle.id, waiter)
    try:
        await subscription.aconfirm()
        await _bounded(
            _db(_subscribe_and_refresh, handle), {"job_id": handle.id}, deadline, timeout
        )
        return await _await_loop(handle, waiter, deadline, timeout)
    finally:
        notifier.unsubscribe(handle.id, waiter)


async def _await_loop(
    handle: JobHandle, waiter: AsyncWaiter, deadline: float, timeout: float
) -> Any:
    while not handle.finished:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeoutError(handle.id, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), _poll_interval(remaining))
        waiter.event.clear()
        remaining = deadline - time.monotonic()
        try:
            # A little grace, so a job that finished right at the deadline still answers.
            await asyncio.wait_for(_db(handle._poll), max(0.25, remaining))
        except TimeoutError:
            raise JobTimeoutError(handle.id, timeout) from None
    return _outcome(handle)
