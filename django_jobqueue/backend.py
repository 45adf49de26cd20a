"""``JobQueueBackend``: Django's Tasks framework, run by django-jobqueue.

::

    TASKS = {"default": {"BACKEND": "django_jobqueue.backend.JobQueueBackend",
                         "QUEUES": ["default", "emails"]}}

On Django 6 it builds on ``django.tasks``; on Django 5.2 on the ``django-tasks`` backport
(``django_tasks`` in ``INSTALLED_APPS``). A task is a job: its ``TaskResult.id`` is its job id,
so ``get_job()``, waiting, cancelling, dead letters and the admin work on tasks too.

How a worker finds a task: each ``Task`` the backend validates (when its module is imported,
by ``@task``) is registered in this process's job registry under its ``module_path``, and
the app autodiscovers the ``tasks`` modules of installed apps when a ``TASKS`` backend is this
one, as it does ``jobs`` modules. A job row only ever names a registered function; nothing is
imported because a row says so.

Building the backend touches no database: it is built when a module with ``@task`` is
imported.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import signals
from .base import FINISHED, Status
from .context import current_run
from .decorators import JobFunction
from .exceptions import InvalidJobError, JobCancelledError, SerializationError
from .handles import enqueue_jobs
from .models import DeadLetter, Job
from .options import (
    JOB_ID_MAX_LENGTH,
    check_positive_int,
    check_queue,
    check_time_limit,
)
from .registry import registry
from .routers import queue_databases
from .serialization import check_result

if django.VERSION >= (6, 0):
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started

    FRAMEWORK = "django.tasks"
else:  # Django 5.2: the django-tasks backport
    try:
        from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef,assignment]
        from django_tasks.base import (  # type: ignore[no-redef,assignment]
            Task,
            TaskContext,
            TaskError,
            TaskResult,
            TaskResultStatus,
        )
        from django_tasks.exceptions import (  # type: ignore[no-redef,assignment]
            InvalidTaskBackendError as InvalidTaskBackend,
        )
        from django_tasks.exceptions import (  # type: ignore[no-redef,assignment]
            InvalidTaskError as InvalidTask,
        )
        from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[no-redef,assignment]
        from django_tasks.signals import (  # type: ignore[no-redef,assignment]
            task_enqueued,
            task_finished,
            task_started,
        )
    except ImportError as exc:  # pragma: no cover - depends on what is installed
        raise ImproperlyConfigured(
            "django_jobqueue.backend.JobQueueBackend needs Django's Tasks framework: Django 6, "
            "or on Django 5.2 the backport (pip install django-tasks, and add 'django_tasks' "
            "to INSTALLED_APPS)."
        ) from exc

    FRAMEWORK = "django_tasks"

__all__ = ["FRAMEWORK", "STATUSES", "JobQueueBackend", "TaskJob"]

logger = logging.getLogger("django_jobqueue.backend")

#: A job's status -> its task's status (every :class:`Status` needs one: a status added
#: there is added here). A cancelled job is a failed task (its last error is
#: ``JobCancelledError``): the framework has no cancelled state, and a cancelled job is, like
#: a failed one, finished for good and never run again within its ``result_ttl``.
STATUSES: dict[str, Any] = {
    # A job waiting for its parents (workflows) is, to the framework, waiting to run.
    Status.BLOCKED: TaskResultStatus.READY,
    Status.QUEUED: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.COMPLETED: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.CANCELLED: TaskResultStatus.FAILED,
}

#: ``OPTIONS`` keys: this project's settings that may differ for one backend's tasks.
OPTIONS: dict[str, Callable[[Any], Any]] = {
    "MAX_ATTEMPTS": lambda value: check_positive_int("MAX_ATTEMPTS", value, 1),
    "RESULT_TTL": lambda value: check_positive_int("RESULT_TTL", value, 0),
    "TIME_LIMIT": check_time_limit,
}

_CANCELLED_PATH = f"{JobCancelledError.__module__}.{JobCancelledError.__qualname__}"


@dataclasses.dataclass(slots=True, eq=False)
class _Attempt:
    """An attempt of a task run in this process, from its start to its ``job_finished``."""

    task: Any
    #: Set when the task's function returned (``exc`` None) or raised.
    done: bool = False
    exc: BaseException | None = None

    def end(self, exc: BaseException | None) -> None:
        self.exc, self.done = exc, True


#: Attempts run in this process whose ``task_finished`` waits for their outcome to be written:
#: job id -> its attempt. Added when the attempt starts, removed by the worker's
#: ``job_finished`` whatever happens to the function, so a thread that returns after its
#: attempt timed out (and was recorded) only ends an attempt nobody holds any more.
_finishing: dict[str, _Attempt] = {}


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class TaskJob(JobFunction[Any, Any]):
    """The job a :class:`Task` runs as: registered under the task's ``module_path``; its
    ``func`` runs the task's function with the framework's signals and context."""

    task: Any = None
    keeps_attempt_log: ClassVar[bool] = True


class JobQueueBackend(BaseTaskBackend):
    """Tasks of Django's Tasks framework as django-jobqueue jobs.

    ``QUEUES``: the queue names tasks may use (Django's rule: default ``["default"]``, an
    empty list allows any). ``OPTIONS``: ``MAX_ATTEMPTS``, ``RESULT_TTL`` and ``TIME_LIMIT``
    for this backend's tasks, each defaulting to ``JOBQUEUE``'s.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if not isinstance(self.options, Mapping):
            raise InvalidTaskBackend(f"TASKS[{alias!r}]['OPTIONS'] must be a dict.")
        unknown = sorted(set(self.options) - set(OPTIONS))
        if unknown:
            raise InvalidTaskBackend(
                f"Unknown TASKS[{alias!r}]['OPTIONS'] {', '.join(map(repr, unknown))}; "
                f"JobQueueBackend takes {', '.join(OPTIONS)}."
            )
        self._options: dict[str, Any] = {}
        for key, value in self.options.items():
            try:
                self._options[key] = OPTIONS[key](value)
            except InvalidJobError as exc:
                raise InvalidTaskBackend(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from None

    # -- tasks ------------------------------------------------------------------------------

    def validate_task(self, task: Task) -> None:
        """Django's checks (module-level function, ``context`` parameter, priority range,
        aware ``run_after``, ``QUEUES``), then this queue's own (a storable queue name);
        registers the task so that workers of this process can run it."""
        super().validate_task(task)
        try:
            check_queue(task.queue_name)
        except InvalidJobError as exc:
            raise InvalidTask(str(exc)) from None
        if len(task.module_path) > 200:
            raise InvalidTask(f"A task's module path must be at most 200 characters: {task}.")
        _register(task)

    def enqueue(self, task: Task, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TaskResult:
        """Write the task's job (in the caller's transaction, if any) and return its
        ``READY`` result. Arguments that are not JSON or do not fit the function raise
        ``InvalidJobError`` / ``SerializationError`` and write nothing."""
        self.validate_task(task)
        definition = dataclasses.replace(
            _register(task),
            queue=task.queue_name,
            priority=task.priority,
            run_after=task.run_after,
            max_attempts=self._options.get("MAX_ATTEMPTS"),
            result_ttl=self._options.get("RESULT_TTL"),
            **(
                {"time_limit": self._options["TIME_LIMIT"]} if "TIME_LIMIT" in self._options else {}
            ),
        )
        new = definition._new_job(args, kwargs, timezone.now(), notify=False)
        result = self._result(
            task,
            new.job_id,
            TaskResultStatus.READY,
            args=new.args,
            kwargs=new.kwargs,
            enqueued_at=new.enqueued_at,
        )
        # Written, then task_enqueued, then announced: wakes workers; JOBQUEUE["EAGER"] runs
        # it here. Inside atomic() on another database than the queue's: once that commits.
        (handle,) = enqueue_jobs(
            [new], before_announce=lambda: _send(task_enqueued, type(self), result)
        )
        if handle.status != Status.QUEUED:
            return self.get_result(new.job_id)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The task result ``result_id`` as stored now. ``TaskResultDoesNotExist`` for an id
        no task has (a malformed one, without a query), a plain ``@job`` job's id, a task
        whose module this process has not imported, or a result pruned past its
        ``result_ttl`` (a dead letter outlives it: that task stays ``FAILED``)."""
        if (
            not isinstance(result_id, str)
            or not 0 < len(result_id) <= JOB_ID_MAX_LENGTH
            or "\x00" in result_id
        ):
            raise TaskResultDoesNotExist(result_id)
        try:
            result_id.encode()
        except UnicodeEncodeError:  # a lone surrogate
            raise TaskResultDoesNotExist(result_id) from None
        for using in queue_databases():  # queues on databases of their own: each in turn
            row = Job.objects.using(using).select_related("outcome").filter(job_id=result_id)
            job = row.first()
            if job is not None:
                return self._from_job(job)
            letter = DeadLetter.objects.using(using).filter(job_id=result_id).first()
            if letter is not None:
                return self._from_dead_letter(letter)
        raise TaskResultDoesNotExist(result_id)

    async def aget_result(self, result_id: str) -> TaskResult:
        """Async twin of :meth:`get_result`."""
        return await sync_to_async(self.get_result)(result_id)

    # -- building results ---------------------------------------------------------------------

    def _task_of(self, name: str, result_id: str, priority: int, queue: str) -> Task:
        definition = registry.get(name) if name in registry else None
        if not isinstance(definition, TaskJob):
            raise TaskResultDoesNotExist(
                f"{result_id}: job {name!r} is not a task this process knows (a plain @job, or "
                "its tasks module was not imported here)."
            )
        task = definition.task
        if (task.priority, task.queue_name, task.backend) == (priority, queue, self.alias):
            return task
        try:
            return task.using(priority=priority, queue_name=queue, backend=self.alias)
        except InvalidTask:  # QUEUES changed since it was enqueued: the task as declared
            return task

    def _from_job(self, row: Job) -> TaskResult:
        task = self._task_of(row.name, row.job_id, row.priority, row.queue)
        log = list(row.attempt_log or [])
        status = STATUSES[row.status]
        errors = [_error(entry) for entry in log if isinstance(entry, dict)]
        if row.status == Status.CANCELLED:
            errors.append(TaskError(exception_class_path=_CANCELLED_PATH, traceback=row.last_error))
        workers = [str(entry.get("worker", "")) for entry in log if isinstance(entry, dict)]
        workers += [row.worker] * max(0, row.attempts - len(workers))
        first_start = _when(log[0].get("started_at")) if log else None
        finished = row.status in FINISHED
        result = self._result(
            task,
            row.job_id,
            status,
            args=row.args,
            kwargs=row.kwargs,
            enqueued_at=row.enqueued_at,
            started_at=first_start or row.started_at,
            last_attempted_at=row.started_at,
            finished_at=row.finished_at if finished else None,
            errors=errors,
            worker_ids=workers,
        )
        if status == TaskResultStatus.SUCCESSFUL:
            outcome = getattr(row, "outcome", None)
            object.__setattr__(result, "_return_value", outcome.result if outcome else None)
        return result

    def _from_dead_letter(self, letter: DeadLetter) -> TaskResult:
        task = self._task_of(letter.name, letter.job_id, letter.priority, letter.queue)
        log = [entry for entry in letter.attempt_log or [] if isinstance(entry, dict)]
        workers = [str(entry.get("worker", "")) for entry in log]
        workers += [""] * max(0, letter.attempts - len(workers))
        return self._result(
            task,
            letter.job_id,
            TaskResultStatus.FAILED,
            args=letter.args,
            kwargs=letter.kwargs,
            enqueued_at=letter.enqueued_at,
            started_at=_when(log[0].get("started_at")) if log else None,
            last_attempted_at=_when(log[-1].get("started_at")) if log else None,
            finished_at=letter.failed_at,
            errors=[_error(entry) for entry in log],
            worker_ids=workers,
        )

    def _result(
        self,
        task: Task,
        result_id: str,
        status: Any,
        *,
        args: Any,
        kwargs: Any,
        enqueued_at: datetime | None = None,
        started_at: datetime | None = None,
        last_attempted_at: datetime | None = None,
        finished_at: datetime | None = None,
        errors: list[Any] | None = None,
        worker_ids: list[str] | None = None,
    ) -> TaskResult:
        return TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=enqueued_at,
            started_at=started_at,
            last_attempted_at=last_attempted_at,
            finished_at=finished_at,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=errors or [],
            worker_ids=worker_ids or [],
        )


def _when(value: Any) -> datetime | None:
    """A ``started_at`` from an ``attempt_log`` entry (ISO 8601 on PostgreSQL, Django's
    naive UTC text on SQLite)."""
    if not isinstance(value, str):
        return None
    when = parse_datetime(value)
    if when is not None and timezone.is_naive(when) and settings.USE_TZ:
        when = timezone.make_aware(when, UTC)
    return when


def _error(entry: dict[str, Any]) -> Any:
    return TaskError(
        exception_class_path=str(entry.get("exception") or ""),
        traceback=str(entry.get("traceback") or ""),
    )


def _send(signal: Any, sender: type, result: TaskResult) -> None:
    """Send one of the framework's signals; a receiver that raises is logged (as the queue's
    own signals are) and never fails the task or the worker."""
    signals.send_robust(signal, sender=sender, task_result=result)


# -- registration and running ------------------------------------------------------------------


def _register(task: Task) -> TaskJob:
    """The :class:`TaskJob` of ``task``'s function, registered on first sight."""
    name = task.module_path
    existing = registry.get(name) if name in registry else None
    if isinstance(existing, TaskJob) and existing.task.func is task.func:
        return existing
    if existing is not None and not isinstance(existing, TaskJob):
        raise InvalidTask(
            f"{name} is already registered as an @job; a function is a job or a task, not both."
        )
    definition = TaskJob(
        func=_runner(task),
        name=name,
        queue=task.queue_name,  # the queues a worker listens to include it
        priority=task.priority,
        task=task,
    )
    registry.register(definition)
    return definition


def _runner(task: Task) -> Callable[..., Any]:
    """The function a worker calls for ``task``: sends ``task_started``, passes a
    ``TaskContext`` if the task takes one, and leaves ``task_finished`` to the worker's
    ``job_finished``, once the outcome is written. Its signature is the task's, less the
    context parameter, so arguments are checked at enqueue."""
    func = task.func
    signature = inspect.signature(func)
    if task.takes_context:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            claim = current_run.get()
            if claim is None:
                return await func(*args, **kwargs)
            attempt = _finishing[claim.job_id] = _Attempt(task)
            prefix = await sync_to_async(_started)(task, claim.job_id)
            try:
                value = _stored(await func(*prefix, *args, **kwargs))
            except BaseException as exc:
                attempt.end(exc)
                raise
            attempt.end(None)
            return value

        run_async.__signature__ = signature  # type: ignore[attr-defined]
        return run_async

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        claim = current_run.get()
        if claim is None:
            return func(*args, **kwargs)
        attempt = _finishing[claim.job_id] = _Attempt(task)
        prefix = _started(task, claim.job_id)
        try:
            value = _stored(func(*prefix, *args, **kwargs))
        except BaseException as exc:
            attempt.end(exc)
            raise
        attempt.end(None)
        return value

    run.__signature__ = signature  # type: ignore[attr-defined]
    return run


def _stored(value: Any) -> Any:
    """``value``, if it can be stored as a task's result; otherwise the attempt fails with a
    ``TypeError``, as with Django's own backends (whose JSON encoding raises it), with this
    queue's message (which names Django's "Unsupported type")."""
    try:
        check_result(value)
    except SerializationError as exc:
        raise TypeError(str(exc)) from None
    return value


def _started(task: Task, job_id: str) -> tuple[Any, ...]:
    """Read the running task's result (one query), send ``task_started``; the arguments to
    put before the caller's (its ``TaskContext``, if it takes one)."""
    backend = task.get_backend()
    result = backend.get_result(job_id)
    _send(task_started, type(backend), result)
    return (TaskContext(task_result=result),) if task.takes_context else ()


@receiver(signals.job_finished)
def _job_finished(sender: Any, job_id: str, **kwargs: Any) -> None:
    """After the worker wrote an attempt of a task run here: ``task_finished`` with the
    result as stored (one query; none for ``@job`` jobs). A failed attempt's exception is
    the one being handled while it is sent, so the framework's logger logs its traceback."""
    attempt = _finishing.pop(job_id, None)
    if attempt is None or not attempt.done:  # not a task, or ended without its function
        return
    exc = attempt.exc
    backend = attempt.task.get_backend()
    try:
        result = backend.get_result(job_id)
    except TaskResultDoesNotExist:  # pragma: no cover - pruned at once (result_ttl 0)
        return
    if exc is None:
        _send(task_finished, type(backend), result)
        return
    try:
        raise exc
    except BaseException:
        _send(task_finished, type(backend), result)
