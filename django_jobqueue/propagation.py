"""Context propagation: what the caller's classes of ``JOBQUEUE["CONTEXT"]`` capture at
enqueue, restored around the job's run on the worker.

A context class has two methods (called on the class; static or class methods):

* ``capture()``, in the caller, when a job is enqueued: a JSON value, or None for nothing;
* ``restore(value)``, on the worker: a context manager the attempt runs inside.

A class with a true ``at_write`` attribute is captured when the jobs are written instead,
inside the enqueue's tracing span, once per write (:func:`stamped`): the built-in
:class:`~django_jobqueue.context.TraceContext`, whose value is that span.

The values are stored on the job, in its ``context`` column (``{dotted path: value}``; None
when nothing was captured), and kept through dead letters and requeue. A class that cannot
be imported is reported by ``manage.py check`` (``django_jobqueue.E040``) and skipped (logged
once per process: the classes are imported once per value of the setting); a
``capture()`` that raises, or returns a value that is not JSON, is logged and skipped: the job
is enqueued all the same, never lost. A ``restore()`` that raises fails that attempt, like any
error of the job, with a message that names the class (:class:`ContextRestoreError`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Protocol

from django.utils.module_loading import import_string

from . import conf
from .base import NewJob
from .exceptions import JobQueueError, SerializationError
from .serialization import check_json

logger = logging.getLogger("django_jobqueue.propagation")


class ContextClass(Protocol):
    """The interface of a class named in ``JOBQUEUE["CONTEXT"]``."""

    def capture(self) -> Any: ...
    def restore(self, value: Any) -> AbstractContextManager[Any]: ...


class ContextRestoreError(JobQueueError):
    """A ``JOBQUEUE["CONTEXT"]`` class's ``restore()`` raised: the attempt fails with it."""


def paths() -> list[str]:
    """The dotted paths of ``JOBQUEUE["CONTEXT"]`` (entries that are not str are skipped:
    ``check`` reports them, ``django_jobqueue.E041``; a value that is not a list is E004,
    and the default is used)."""
    return [path for path in conf.settings.CONTEXT if isinstance(path, str)]


def classes() -> tuple[tuple[str, ContextClass], ...]:
    """The classes of ``JOBQUEUE["CONTEXT"]`` that can be imported, with their paths, in
    order; imported once per value of the setting (and a failure logged once)."""
    return _classes(tuple(paths()))


@functools.lru_cache(maxsize=8)
def _classes(paths: tuple[str, ...]) -> tuple[tuple[str, ContextClass], ...]:
    return tuple((path, cls) for path in paths if (cls := load(path)) is not None)


@functools.lru_cache(maxsize=8)
def _captured_when(paths: tuple[str, ...], at_write: bool) -> tuple[tuple[str, ContextClass], ...]:
    """The classes of ``paths`` captured at enqueue (``at_write`` false) or at write: sorted
    once per value of the setting, not on each enqueue."""
    return tuple(
        (path, cls)
        for path, cls in _classes(paths)
        if bool(getattr(cls, "at_write", False)) is at_write
    )


def load(path: str) -> ContextClass | None:
    """The class at ``path``, or None (logged) if it cannot be imported."""
    try:
        cls: ContextClass = import_string(path)
    except Exception as exc:
        kind = type(exc).__name__
        logger.warning("context=%s skipped: it cannot be imported (%s: %s)", path, kind, exc)
        return None
    return cls


def capture() -> dict[str, Any] | None:
    """What every class of ``JOBQUEUE["CONTEXT"]`` captures now, by dotted path; None if
    nothing. Classes captured at write (``at_write``) are left to :func:`stamped`. Never
    raises: a class that fails is logged and left out."""
    captured = _capture(at_write=False)
    return captured or None


def stamped(jobs: Sequence[NewJob]) -> Sequence[NewJob]:
    """``jobs`` with the values of the ``at_write`` classes added to their context (called
    inside the enqueue span, just before they are written); ``jobs`` themselves when those
    capture nothing."""
    captured = _capture(at_write=True)
    if not captured:
        return jobs
    return [dataclasses.replace(job, context={**(job.context or {}), **captured}) for job in jobs]


def _capture(*, at_write: bool) -> dict[str, Any]:
    captured: dict[str, Any] = {}
    for path, cls in _captured_when(tuple(paths()), at_write):
        try:
            value = cls.capture()
            if value is not None:
                check_json(value, f"{path}.capture()")
        except SerializationError as exc:
            logger.warning("context=%s skipped: capture() returned %s", path, exc)
            continue
        except Exception:
            logger.exception("context=%s skipped: capture() raised", path)
            continue
        if value is not None:
            captured[path] = value
    return captured


@contextmanager
def restoring(context: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block inside each configured class's ``restore(value)`` for the values the
    job carries (in ``JOBQUEUE["CONTEXT"]``'s order; a class without a value is skipped)."""
    if not context:
        yield
        return
    with ExitStack() as stack:
        for path, cls in classes():
            if path not in context:
                continue
            try:
                stack.enter_context(cls.restore(context[path]))
            except Exception as exc:
                raise ContextRestoreError(
                    f"JOBQUEUE['CONTEXT'] class {path}: restore({context[path]!r}) raised "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        yield
