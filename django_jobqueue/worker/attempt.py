"""One attempt of a claimed job: the one function that runs it, wherever it runs.

The worker's pool (:mod:`.runner`), ``JOBQUEUE["EAGER"]`` and
:func:`django_jobqueue.testing.run_jobs` (:mod:`.inline`), and so the tasks of the
``django.tasks`` backend (jobs too), all run an attempt through :func:`run` (sync jobs) or
:func:`arun` (``async def`` jobs). It:

* gives the job its arguments, a :class:`~django_jobqueue.context.JobContext` first when it
  ``takes_context`` (its ``set_progress`` keeps the progress on the :class:`RunningJob`, for
  the writer to record before the ending; its ``cancel_requested`` reads the run's flag);
* calls it inside the ``restore(value)`` of each ``JOBQUEUE["CONTEXT"]`` class the job
  carries a value for (:mod:`django_jobqueue.propagation`), in its tracing span, and
  ``@job(atomic=True)`` in a transaction of its own with its completion (:mod:`.atomic`);
* turns what happened into the attempt's :class:`~.outcomes.Outcome`: the result, or the
  failure with the retry rules applied (an exception outside ``retry_on`` is not retried,
  ``Retry(after=...)`` sets when to run again), and a run that returned after its
  ``time_limit`` fails as it would had the worker's clock stopped it (one that raised keeps
  its own failure and retry rules).

It records no ending (``atomic=True`` aside, whose completion commits with the job's writes,
through the writer's own completion statement): the caller hands the outcome (after
:func:`conclude`) to its :class:`~.writer.Writer`. Where the attempt runs is the caller's
choice: which thread, which connection, and whether a clock interrupts it (the worker's
:mod:`.timelimits`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async

from .. import signals, telemetry
from ..base import Status
from ..context import JobContext, current_run
from ..exceptions import Retry
from ..models import Job, JobDependency, JobResult
from ..propagation import restoring
from .atomic import run_atomic
from .outcomes import Outcome, describe, failed, succeeded, timed_out
from .running import RunningJob

_MAIN = threading.main_thread()


def announce_start(running: RunningJob) -> None:
    """Send ``job_started`` for the attempt about to start (nothing without receivers)."""
    if signals.job_started.has_listeners():
        job = running.job
        signals.send_robust(
            signals.job_started, sender=Job, job_id=job.job_id, attempt=job.attempts
        )


def run(running: RunningJob) -> Outcome:
    """Run the attempt ``running`` of a sync job in this thread; return its outcome.

    A ``KeyboardInterrupt`` in the main thread (``EAGER`` or ``run_jobs()`` under Ctrl-C)
    stops the caller; anything else the job raises is its outcome."""
    job = running.job
    running.thread_id = threading.get_ident()
    token = current_run.set(job)
    started = time.monotonic()
    try:
        if running.cancelled.is_set():  # asked to stop before it started
            raise asyncio.CancelledError
        call = partial(telemetry.run, job, running.definition.func, arguments(running))
        with restoring(job.context):  # JOBQUEUE["CONTEXT"]
            if running.definition.atomic:
                outcome = run_atomic(running.using, job, call)  # worker/atomic.py
            else:
                outcome = succeeded(job, call(), started)
    except BaseException as exc:  # a job's failure, whatever it is, is the job's outcome
        if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is _MAIN:
            raise
        outcome = failed_with(running, started, exc)
    finally:
        current_run.reset(token)
    return _within_limit(running, outcome)


async def arun(running: RunningJob) -> Outcome:
    """Run the attempt ``running`` of an ``async def`` job in this task; return its outcome."""
    job = running.job
    running.task = running.task or asyncio.current_task()
    token = current_run.set(job)  # this task's own copy of the context
    started = time.monotonic()
    try:
        if running.cancelled.is_set():  # asked to stop before it started
            raise asyncio.CancelledError
        args = arguments(running)
        if args and isinstance(args[0], JobContext) and job.parent_failure:
            await sync_to_async(args[0].load_parent_results)()  # no database on the loop
        with restoring(job.context):  # JOBQUEUE["CONTEXT"]
            result = await telemetry.arun(job, running.definition.func, args)
        outcome = succeeded(job, result, started)
    except BaseException as exc:
        outcome = failed_with(running, started, exc)
    finally:
        current_run.reset(token)
    return _within_limit(running, outcome)


def run_here(running: RunningJob) -> Outcome:
    """Run the attempt ``running`` in this thread, sync or ``async def`` (on an event loop
    of asgiref's, as Django runs async code from sync code); return its concluded outcome."""
    outcome = async_to_sync(arun)(running) if running.definition.is_async else run(running)
    return conclude(running, outcome)


def conclude(running: RunningJob, outcome: Outcome) -> Outcome:
    """The outcome to record once the attempt ended: a completion committed with the job's
    writes stands, else a cancel request wins; its last progress not written yet lands with
    it. Call it once the run is no longer reachable by progress writes."""
    outcome.cancelled = not outcome.committed and (outcome.cancelled or running.cancelled.is_set())
    if running.progress_pending:
        outcome.progress = running.progress
    return outcome


def arguments(running: RunningJob) -> list[Any]:
    """The job's positional arguments, a :class:`JobContext` first if it takes one."""
    job = running.job
    if not running.definition.takes_context:
        return job.args
    context = JobContext(
        job_id=job.job_id,
        attempt=job.attempts,
        max_attempts=job.max_attempts,
        queue=job.queue,
        worker=running.worker,
        cancelled=running.cancelled,
        report=running.report_progress,
        parents=partial(parent_results, running.using, job.id) if job.parent_failure else None,
        metadata=job.metadata,
    )
    return [context, *job.args]


def parent_results(using: str, pk: int) -> dict[str, Any]:
    """``{parent job id: result}`` of the completed parents of the job row ``pk``."""
    parents = JobDependency.objects.using(using).filter(child_id=pk).values("parent_job_id")
    return dict(
        JobResult.objects.using(using)
        .filter(job__job_id__in=parents, job__status=Status.COMPLETED)
        .values_list("job__job_id", "result")
    )


def failed_with(running: RunningJob, started: float, exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc`` (call it from the ``except`` block):
    ``Retry`` sets when to run again; an error outside ``retry_on`` is not retried."""
    outcome = failed(running.job, started, describe(exc))
    retry_on = running.definition.retry_on
    if isinstance(exc, Retry):
        outcome.retry_after = exc.after
    elif retry_on is not None and not running.definition.retries(exc):
        outcome.retry = False
        names = ", ".join(kind.__name__ for kind in retry_on)
        outcome.error += f" (not retried: {type(exc).__name__} is not in retry_on ({names}))"
    return outcome


def _within_limit(running: RunningJob, outcome: Outcome) -> Outcome:
    """``outcome``, or the time limit's failure if the run returned after its limit (and
    did not commit): where no clock stopped it (inline), or it ended as the clock struck.

    A run that failed keeps its own failure, and so its retry rules (an error outside
    ``retry_on`` is not retried, ``Retry(after=...)`` keeps its time)."""
    limit = running.job.time_limit
    if limit is None or not outcome.ok or outcome.committed or outcome.duration <= limit:
        return outcome
    trace = "The attempt returned after its time limit had passed; nothing interrupted it."
    return timed_out(running.job, outcome.duration, trace)
