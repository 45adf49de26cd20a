"""Batches: ``with batch(on_success=..., on_complete=..., name=...) as b:`` and
:func:`get_batch`.

Every job enqueued inside the block (in this thread or task) joins the batch, in the
transaction that writes it. Each job's ending is counted on the batch's row in the
transaction that records it; the callbacks (bound jobs) are enqueued exactly once, in the
transaction that records the last ending, or that seals the batch when the block exits, if
its jobs finished first. See :mod:`django_jobqueue.querysets.batches`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import conf, waiting
from .base import FINISHED
from .canvas import BoundJob
from .exceptions import InvalidJobError, JobTimeoutError
from .models import Job, JobBatch
from .producing import current_batch, new_job_id
from .querysets.batches import CALLBACK_FIELDS
from .querysets.dependencies import seal
from .routers import queue_database


def _callback(value: Any, which: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, BoundJob):
        hint = " (call .bind(...) on it with its arguments)" if hasattr(value, "bind") else ""
        raise InvalidJobError(
            f"batch({which}=...) takes a bound job, job.bind(...), not "
            f"{type(value).__name__}: {value!r}{hint}."
        )
    new = value.job.new_job(value.args, value.kwargs)
    return {name: getattr(new, name) for name in CALLBACK_FIELDS}


class Batch:
    """The ``with`` block of :func:`batch`; ``id`` is the batch's id once it is entered."""

    def __init__(
        self,
        on_success: BoundJob | None = None,
        on_complete: BoundJob | None = None,
        name: str = "",
    ) -> None:
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidJobError(
                f"batch(name=...) takes a str of up to 200 characters, not {name!r}."
            )
        self.on_success = _callback(on_success, "on_success")
        self.on_complete = _callback(on_complete, "on_complete")
        self.name = name
        self.id = ""
        self._token: Any = None

    def __enter__(self) -> Batch:
        if current_batch.get() is not None:
            raise InvalidJobError(
                "batch() inside another batch: nesting is not supported. Enqueue the inner "
                "jobs in the outer batch, or chain the batches' callbacks."
            )
        self.id = f"b{new_job_id()}"
        JobBatch.objects.using(queue_database()).create(
            id=self.id,
            name=self.name,
            on_success=self.on_success,
            on_complete=self.on_complete,
        )
        self._token = current_batch.set(self.id)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Seal the batch, whatever happened in the block: the jobs written so far are its
        jobs, and its callbacks follow them."""
        current_batch.reset(self._token)
        using = queue_database()
        with transaction.atomic(using=using):
            seal(Job.objects.using(using)._sql(), self.id, timezone.now())


def batch(
    on_success: BoundJob | None = None, on_complete: BoundJob | None = None, name: str = ""
) -> Batch:
    """A batch of jobs: ``with batch(...) as b:``; every job enqueued in the block joins it.

    ``on_success`` (every job completed) and ``on_complete`` (every job finished, whatever
    its outcome) are bound jobs (``job.bind(...)``), enqueued once when the batch finishes.
    A batch inside a batch raises :class:`InvalidJobError`.
    """
    return Batch(on_success, on_complete, name)


class BatchHandle:
    """What :func:`get_batch` returns: ``id``, ``name``, ``total``, ``counts``, ``finished``."""

    def __init__(self, row: JobBatch) -> None:
        self.id = row.id
        self.name = row.name
        self.total = row.total
        self.sealed = row.sealed
        #: Every job of the sealed batch finished (its callbacks are enqueued).
        self.finished = row.callbacks_done
        #: ``pending``, then one count per finished status (``base.FINISHED``).
        self.counts = {"pending": row.pending, **{s: getattr(row, s) for s in FINISHED}}

    def refresh(self) -> BatchHandle:
        row = JobBatch.objects.using(queue_database()).get(pk=self.id)
        self.__init__(row)  # type: ignore[misc]
        return self

    def wait(self, timeout: float | None = None) -> BatchHandle:
        """Block until every job of the batch finished (polling its row every
        ``POLL_INTERVAL`` seconds at most); ``JobTimeoutError`` after ``timeout`` seconds
        (default ``WAIT_TIMEOUT``)."""
        waiting.refuse_in_atomic("get_batch(...).wait()")
        seconds = waiting.resolve_timeout(timeout)
        deadline = time.monotonic() + seconds
        pause = 0.01
        while not self.refresh().finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobTimeoutError(self.id, seconds)
            time.sleep(min(pause, left))
            pause = min(pause * 2, conf.settings.POLL_INTERVAL)
        return self

    def __repr__(self) -> str:
        return f"<BatchHandle {self.id} {self.counts}>"


def get_batch(batch_id: str) -> BatchHandle | None:
    """The batch ``batch_id``, or None."""
    row = JobBatch.objects.using(queue_database()).filter(pk=batch_id).first()
    return BatchHandle(row) if row is not None else None
