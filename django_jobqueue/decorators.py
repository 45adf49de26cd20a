"""``@job``: turn a module-level function into something you can enqueue."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Concatenate, Generic, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async
from django.utils import timezone

from . import conf, waiting
from .base import JobState, NewJob, Status
from .canvas import BoundJob
from .context import JobContext
from .declaration import check_atomic, check_retry_on, check_schedule, check_takes_context
from .exceptions import InvalidJobError
from .handles import JobHandle, announce, enqueue_jobs
from .options import (
    UNSET,
    _Unset,
    check_group,
    check_job_id,
    check_limit,
    check_options,
    check_positive_int,
    check_priority,
    check_queue,
    check_time_limit,
    did_you_mean,
    limit_with_queue,
    resolve_run_after,
)
from .producing import insert_jobs, insert_steps, new_job_id, new_job_ids
from .propagation import capture
from .registry import registry
from .serialization import check_call, check_metadata
from .uniqueness import (
    Unique,
    check_signature,
    check_unique,
    check_unique_period,
    unique_job_id,
)

P = ParamSpec("P")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class JobFunction(Generic[P, R]):
    """A registered job. Call it to run inline; ``enqueue()`` it to run on a worker.

    Frozen: ``using(...)`` returns a copy with other options and validates them first.
    ``None`` options take their value from the ``JOBQUEUE`` setting when the job is enqueued.
    """

    func: Callable[P, R]
    name: str
    queue: str | None = None
    priority: int = 0
    max_attempts: int | None = None
    result_ttl: int | None = None
    job_id: str | None = None
    run_after: timedelta | datetime | None = None
    group: str | None = None
    timeout: float | None = None
    #: Seconds an attempt may run; None: no limit; UNSET: ``JOBQUEUE["TIME_LIMIT"]``.
    time_limit: float | _Unset | None = dataclasses.field(default_factory=lambda: UNSET)
    #: The limit key, or several keys in their stored form (``limits.join``).
    limit: str | None = None
    takes_context: bool = False
    #: Exceptions that are retried; None: every ``Exception``.
    retry_on: tuple[type[BaseException], ...] | None = None
    #: A cron expression: every running worker enqueues each of its ticks once.
    schedule: str | None = None
    #: Whether its rows log each failed attempt (``Job.attempt_log``): a task's do (its
    #: ``TaskResult.errors``), an ``@job``'s keep NULL.
    keeps_attempt_log: ClassVar[bool] = False
    #: Run each attempt inside a transaction on the job's database that also records its
    #: completion, fenced by the attempt (see ``@job(atomic=True)``).
    atomic: bool = False
    #: Ids of the jobs this one runs after (``using(after=...)``: workflows).
    after: tuple[str, ...] = ()
    #: What it does when one of them fails or is cancelled: "cancel" or "run".
    parent_failure: str = "cancel"
    #: Derive the job id from the arguments (all, or these): see :mod:`.uniqueness`.
    unique: Unique = False
    #: Seconds: a unique job runs once per key per period, finished or not.
    unique_period: int | None = None
    #: ``.using(metadata=...)``: kept with each job, never passed as arguments.
    metadata: dict[str, Any] | None = None
    #: What an enqueue of an id that exists does: "return", "replace" or "rerun".
    on_duplicate: str = "return"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, without the queue (a ``takes_context`` job gets a
        context whose ``worker`` is ``"inline"``)."""
        if self.takes_context:
            context = JobContext(
                job_id=f"inline-{new_job_id()}",
                attempt=1,
                max_attempts=1,
                queue=self.queue or conf.settings.DEFAULT_QUEUE,
                worker="inline",
            )
            return self.func(context, *args, **kwargs)  # type: ignore[arg-type]
        return self.func(*args, **kwargs)

    def using(self, **options: Any) -> JobFunction[P, R]:
        """Return a copy with other options: job_id, queue, priority, run_after, group,
        max_attempts, result_ttl, timeout, time_limit, limit, after (job handles or ids to
        run after: the job is "blocked" until they completed), parent_failure ("cancel" or
        "run": what it does when one of them fails), metadata and on_duplicate. Unknown
        options and bad values raise ``InvalidJobError`` here, before anything is written."""
        checked = check_options(options, f"{self.name}.using()")
        if "metadata" in checked:
            checked["metadata"] = check_metadata(checked["metadata"])
        changed = dataclasses.replace(self, **checked)
        if changed.after and changed.on_duplicate != "return":
            raise InvalidJobError(
                f"{self.name}.using(): on_duplicate={changed.on_duplicate!r} cannot be combined "
                "with after= (a job with parents is enqueued once, with them); use one or the "
                "other. Nothing was written."
            )
        return changed

    def bind(self, *args: P.args, **kwargs: P.kwargs) -> BoundJob:
        """This job called with these arguments, checked as ``enqueue`` checks them, and not
        enqueued: for :func:`~django_jobqueue.chain` and :func:`~django_jobqueue.group`."""
        return BoundJob(self, args, kwargs)

    if not typing.TYPE_CHECKING:  # (type checkers keep reporting unknown attributes)

        def __getattr__(self, attribute: str) -> Any:
            """``add.delay(...)``: an AttributeError that says what this queue calls it."""
            if attribute.startswith("__"):  # probes by copy, inspect...: no hint, at once
                raise AttributeError(attribute, name=attribute, obj=self)
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {attribute!r}"
                + did_you_mean(attribute, [n for n in dir(type(self)) if n[0] != "_"]),
                name=attribute,
                obj=self,
            )

    def retries(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be retried (``retry_on``)."""
        return isinstance(exc, self.retry_on if self.retry_on is not None else Exception)

    # -- producing ----------------------------------------------------------------------

    def _new_job(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        now: datetime,
        notify: bool,
        job_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> NewJob:
        """The row to write for one call, validated here, in the caller: its id is ``job_id``,
        else the ``job_id`` option, else derived from the arguments (``unique``), else new;
        ``context`` is what ``JOBQUEUE["CONTEXT"]`` captured (None: capture it now)."""
        call_args, call_kwargs = check_call(args, kwargs)
        check_signature(self.name, self.func, self.takes_context, args, kwargs)
        if not (job_id or self.job_id) and self.unique:
            job_id = unique_job_id(self, call_args, call_kwargs, now)
        queue = self.queue or conf.settings.DEFAULT_QUEUE
        return NewJob(
            job_id=job_id or self.job_id or new_job_id(),
            name=self.name,
            queue=queue,
            args=call_args,
            kwargs=call_kwargs,
            priority=self.priority,
            group=self.group,
            run_after=resolve_run_after(self.run_after, now),
            max_attempts=self.max_attempts or conf.settings.MAX_ATTEMPTS,
            result_ttl=(
                self.result_ttl
                if self.result_ttl is not None
                else conf.result_ttl(Status.COMPLETED.value)
            ),
            notify=notify,
            enqueued_at=now,
            time_limit=(
                conf.settings.TIME_LIMIT if isinstance(self.time_limit, _Unset) else self.time_limit
            ),
            limit_key=limit_with_queue(self.limit, queue),  # JOBQUEUE["QUEUES"]
            attempt_log=[] if self.keeps_attempt_log else None,
            ttl_by_outcome=self.result_ttl is None and conf.ttl_by_outcome(),
            metadata=self.metadata,
            context=capture() if context is None else context or None,
        )

    def new_job(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        job_id: str | None = None,
        now: datetime | None = None,
    ) -> NewJob:
        """The row ``enqueue(*args, **kwargs)`` would write, validated; nothing is written.

        For callers that insert it themselves (the scheduler, with its tick's job id)."""
        if job_id is not None:
            job_id = check_job_id(job_id)
        return self._new_job(args, kwargs, now or timezone.now(), notify=False, job_id=job_id)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Queue one run and return its handle at once.

        Inside ``transaction.atomic()`` the job is written in that transaction (on another
        database than the queue's: once it commits); it never exists if that rolls back.
        """
        return self._enqueue([self._new_job(args, kwargs, timezone.now(), notify=False)])[0]

    async def aenqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        """Async twin of :meth:`enqueue`."""
        new = self._new_job(args, kwargs, timezone.now(), notify=False)  # validate here
        return (await sync_to_async(self._enqueue)([new]))[0]

    def enqueue_many(self, calls: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[JobHandle]:
        """Queue one run per item of ``calls`` in one statement per 1,000 jobs.

        Each item is a tuple or list of positional arguments, or a dict of keyword
        arguments. Every item is validated before anything is written. With a fixed
        ``job_id`` option each job gets ``"<job_id>-<index>"``; a ``unique`` job's ids are
        derived from each item's arguments; otherwise fresh ids.
        """
        now = timezone.now()
        jobs = []
        args: Sequence[Any]
        kwargs: Mapping[str, Any]
        calls = calls if isinstance(calls, Sequence) else list(calls)
        fresh = None if self.job_id or self.unique else new_job_ids(len(calls))
        context = capture() or {}  # once for the whole call
        for index, call in enumerate(calls):
            if isinstance(call, Mapping):
                args, kwargs = (), call
            elif isinstance(call, list | tuple):
                args, kwargs = call, {}
            else:
                raise InvalidJobError(
                    f"enqueue_many() item {index} is of type {type(call).__name__}; pass a "
                    "tuple or list of positional arguments or a dict of keyword arguments."
                )
            job_id: str | None = None  # unique: derived from the item's arguments
            if fresh is not None:
                job_id = fresh[index]
            elif self.job_id:
                job_id = check_job_id(f"{self.job_id}-{index}")
            jobs.append(self._new_job(args, kwargs, now, False, job_id, context))
        return self._enqueue(jobs) if jobs else []

    def _enqueue(self, jobs: Sequence[NewJob]) -> list[JobHandle]:
        """Write and announce ``jobs``: after their parents (``after=``), or by the duplicate
        policy; when the caller's transaction is on another database, once it commits."""
        if self.after:
            after, parent_failure = self.after, self.parent_failure
            return enqueue_jobs(
                jobs, insert=lambda new: insert_steps([(n, after, parent_failure) for n in new])
            )
        return enqueue_jobs(
            jobs, insert=functools.partial(insert_jobs, on_duplicate=self.on_duplicate)
        )

    def enqueue_and_wait(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Queue one run (or join the existing run of the same ``job_id``) and return its result.

        Subscribes to the job's "finished" notification before the job is written. Raises
        ``JobTimeoutError`` after ``timeout`` seconds (default ``WAIT_TIMEOUT``; the job keeps
        running), ``JobFailedError`` if it fails for good, and ``JobQueueError`` inside
        ``transaction.atomic()``, where workers could not see the job until commit.
        """
        waiting.refuse_in_atomic(f"{self.name}.enqueue_and_wait()")
        timeout = waiting.resolve_timeout(self.timeout)
        new = self._new_job(args, kwargs, timezone.now(), notify=True)
        state = waiting.enqueue_and_wait(
            new.job_id,
            new.queue,
            functools.partial(
                _enqueue_waited, new, self.after, self.parent_failure, self.on_duplicate
            ),
            timeout=timeout,
            fixed_id=self.job_id is not None or bool(self.unique),
        )
        return waiting.outcome(new.job_id, state)

    async def aenqueue_and_wait(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Async twin of :meth:`enqueue_and_wait`: no thread and no database connection is
        held while waiting."""
        timeout = waiting.resolve_timeout(self.timeout)
        new = self._new_job(args, kwargs, timezone.now(), notify=True)
        state = await waiting.aenqueue_and_wait(
            new.job_id,
            new.queue,
            functools.partial(
                _enqueue_waited, new, self.after, self.parent_failure, self.on_duplicate
            ),
            timeout=timeout,
            fixed_id=self.job_id is not None or bool(self.unique),
        )
        return waiting.outcome(new.job_id, state)


def _enqueue_waited(
    new: NewJob,
    after: tuple[str, ...],
    parent_failure: str,
    on_duplicate: str,
    written: Callable[[], None],
    lock_timeout: float | None,
) -> JobState:
    """Write one waited-for job (``waiting.Enqueue``), after its parents if any; its state
    once announced: a receiver of ``job_enqueued`` (``EAGER``) may have run it to its end
    meanwhile, in this thread."""
    if after:
        snapshots = insert_steps([(new, after, parent_failure)], notify=True, written=written)
    else:
        snapshots = insert_jobs(
            [new],
            notify=True,
            lock_timeout=lock_timeout,
            written=written,
            on_duplicate=on_duplicate,
        )
    (handle,) = announce(snapshots, waited_for=True)
    return JobState(handle.status, handle.attempts, handle.result, handle.error)


@overload
def job(func: Callable[P, R], /) -> JobFunction[P, R]: ...


@overload
def job(
    *,
    name: str | None = ...,
    queue: str | None = ...,
    priority: int = ...,
    max_attempts: int | None = ...,
    result_ttl: int | None = ...,
    takes_context: Literal[True],
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
    time_limit: float | _Unset | None = ...,
    limit: str | list[str] | tuple[str, ...] | None = ...,
    schedule: str | None = ...,
    atomic: bool = ...,
    unique: bool | tuple[str, ...] = ...,
    unique_period: int | None = ...,
) -> Callable[[Callable[Concatenate[JobContext, P], R]], JobFunction[P, R]]: ...


@overload
def job(
    *,
    name: str | None = ...,
    queue: str | None = ...,
    priority: int = ...,
    max_attempts: int | None = ...,
    result_ttl: int | None = ...,
    takes_context: Literal[False] = ...,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = ...,
    time_limit: float | _Unset | None = ...,
    limit: str | list[str] | tuple[str, ...] | None = ...,
    schedule: str | None = ...,
    atomic: bool = ...,
    unique: bool | tuple[str, ...] = ...,
    unique_period: int | None = ...,
) -> Callable[[Callable[P, R]], JobFunction[P, R]]: ...


def job(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    result_ttl: int | None = None,
    takes_context: bool = False,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
    time_limit: float | _Unset | None = UNSET,
    limit: str | list[str] | tuple[str, ...] | None = None,
    schedule: str | None = None,
    atomic: bool = False,
    unique: bool | tuple[str, ...] = False,
    unique_period: int | None = None,
    **unknown: Any,
) -> Any:
    """Register a module-level function (sync or ``async def``) as a job.

    ``@job`` names it ``"<module>.<function>"``; ``@job(name=..., queue=..., priority=...,
    max_attempts=..., result_ttl=...)`` sets its defaults. Options left as None follow the
    ``JOBQUEUE`` setting when the job is enqueued.

    * ``takes_context=True``: the first parameter receives a :class:`JobContext`.
    * ``retry_on``: the exception classes that are retried; any other error fails the job at
      once (a dead letter). Default: every ``Exception`` is retried until ``max_attempts``.
    * ``time_limit``: seconds an attempt may run (None: no limit; default
      ``JOBQUEUE["TIME_LIMIT"]``).
    * ``limit``: a key of ``JOBQUEUE["LIMITS"]`` whose concurrency and rate the job counts
      against, or a list of keys: the job runs only when every one allows it.
    * ``schedule``: a cron expression (croniter syntax, in ``settings.TIME_ZONE``): running
      workers enqueue the job, with no arguments, once per tick (a schedule named after the
      job; see ``JOBQUEUE["SCHEDULE"]`` for schedules with arguments).
    * ``atomic=True``: on a worker, each attempt runs inside a transaction on the job's
      database (the queue's, ``JOBQUEUE["DATABASE"]``) that also records its completion,
      fenced by the attempt: a worker killed mid-job leaves none of its writes, a run that
      lost its lease rolls them back, and a failed attempt rolls them back before its
      failure is recorded (writes to another database are not fenced). Sync functions only.
    * ``unique=True`` (or a tuple of parameter names): the job id is derived from the name
      and the arguments (or those named), so equal calls are one job; ``unique_period=S``:
      one run per key per ``S`` seconds, finished or not (docs/guide/uniqueness.md).
    """

    if unknown:  # what Python would raise, with a hint (Celery's max_retries, bind...)
        word = sorted(unknown)[0]
        valid = [
            p.name for p in inspect.signature(job).parameters.values() if p.kind is p.KEYWORD_ONLY
        ]
        raise TypeError(
            f"job() got an unexpected keyword argument {word!r}{did_you_mean(word, valid)}"
        )

    def decorate(function: Callable[..., Any]) -> JobFunction[Any, Any]:
        if not callable(function):
            raise InvalidJobError(f"@job decorates a function, not {function!r}.")
        qualname = getattr(function, "__qualname__", "")
        if name is None and ("<locals>" in qualname or "<lambda>" in qualname):
            raise InvalidJobError(
                f"@job needs a module-level function, but {qualname} is defined inside "
                "another function: a worker could not find it. Move it to a module "
                "(myapp/jobs.py) or pass @job(name=...)."
            )
        job_name = name if name is not None else f"{function.__module__}.{qualname}"
        if not isinstance(job_name, str) or not job_name or len(job_name) > 200:
            raise InvalidJobError(f"A job name must be 1 to 200 characters, not {job_name!r}.")
        definition = JobFunction(
            func=function,
            name=job_name,
            queue=check_queue(queue) if queue is not None else None,
            priority=check_priority(priority),
            max_attempts=(
                check_positive_int("max_attempts", max_attempts, 1)
                if max_attempts is not None
                else None
            ),
            result_ttl=(
                check_positive_int("result_ttl", result_ttl, 0) if result_ttl is not None else None
            ),
            group=check_group(None),
            time_limit=time_limit if time_limit is UNSET else check_time_limit(time_limit),
            limit=check_limit(limit),
            takes_context=check_takes_context(function, takes_context),
            retry_on=check_retry_on(retry_on),
            schedule=check_schedule(function, job_name, schedule, takes_context),
            atomic=check_atomic(function, job_name, atomic),
            unique=(unique_on := check_unique(function, job_name, unique, takes_context)),
            unique_period=check_unique_period(unique_period, job_name, unique_on),
        )
        registry.register(definition)
        return definition

    if func is not None:
        return decorate(func)
    return decorate
