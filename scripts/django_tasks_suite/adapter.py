"""The thin adapter that runs Django's own ``tests/tasks`` suite against JobQueueBackend.

The suite configures Django's built-in backends by path; the adapter builds this backend in
their place (``TaskBackendHandler.create_connection``), without touching the suite's
assertions:

* ``ImmediateBackend`` paths: tasks must have run when ``enqueue()`` returns. In the
  ``queued`` mode (``DJQ_SUITE_MODE=queued``) ``enqueue()`` writes the job, then a real
  in-process worker makes one burst pass (its own threads and connection) and the result is
  read back from the database. In the ``eager`` mode the job runs in the caller as
  ``JOBQUEUE["EAGER"]`` runs it (``worker.inline.run_now``).
* ``DummyBackend`` paths: tasks are enqueued and never run; ``results`` and ``clear()`` (the
  dummy backend's test API) read and empty the job table.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.tasks import TaskBackendHandler
from django.utils.module_loading import import_string

MODE = os.environ.get("DJQ_SUITE_MODE", "queued")


@functools.cache
def backends() -> dict[str, type]:
    """The backend built for each of the suite's backend paths (imported once the app
    registry is ready: the backend module imports models)."""
    from django_jobqueue.backend import JobQueueBackend
    from django_jobqueue.models import Job
    from django_jobqueue.worker import Worker
    from django_jobqueue.worker.inline import run_now

    class RunsBeforeReturning(JobQueueBackend):
        """For the suite's ImmediateBackend: the task has run when ``enqueue()`` returns."""

        def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
            result = super().enqueue(task, args, kwargs)
            if MODE == "eager":
                # What JOBQUEUE["EAGER"] does once the enqueue is written (its job_enqueued
                # receiver calls run_now); the setting itself would run the suite's
                # DummyBackend tasks too.
                run_now(result.id)
                return self.get_result(result.id)
            if MODE == "queued":
                # A worker pass on a thread of its own, as a worker process has: the suite's
                # async tests call enqueue() from asgiref's sync thread, which the worker's
                # async jobs must not wait for.
                worker = Worker(burst=True, wait_for_retries=False)
                thread = threading.Thread(target=worker.run)
                thread.start()
                thread.join(timeout=60)
                return self.get_result(result.id)
            return result

    class NeverRuns(JobQueueBackend):
        """For the suite's DummyBackend: tasks are stored and never run."""

        @property
        def results(self) -> list[Any]:
            def read() -> list[Any]:
                ids = Job.objects.order_by("id").values_list("job_id", flat=True)
                return [self.get_result(job_id) for job_id in ids]

            return _off_the_loop(read)

        def clear(self) -> None:
            _off_the_loop(lambda: Job.objects.all().delete())

    return {
        "django.tasks.backends.immediate.ImmediateBackend": RunsBeforeReturning,
        "django.tasks.backends.dummy.DummyBackend": NeverRuns,
    }


def _off_the_loop(function: Any) -> Any:
    """Call ``function`` (database work) here, or on a thread when an event loop runs here:
    the suite reads the dummy backend's ``results`` from async tests."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


_original = TaskBackendHandler.create_connection


def create_connection(self: TaskBackendHandler, alias: str) -> Any:
    params = self.settings[alias]
    backend = backends().get(params["BACKEND"])
    if backend is None:
        return _original(self, alias)
    import_string(params["BACKEND"])  # still a valid path, as the suite expects
    return backend(alias=alias, params=params)


def install() -> None:
    TaskBackendHandler.create_connection = create_connection  # type: ignore[method-assign]
