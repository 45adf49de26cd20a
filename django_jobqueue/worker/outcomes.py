"""The outcome of one attempt, as the runner reports it and the writer records it."""

from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from .. import conf
from ..base import ClaimedJob, Ending
from ..exceptions import TimeLimitExceeded
from ..serialization import clean_text, result_size


@dataclass(slots=True, eq=False)
class Outcome:
    """How the attempt ``job`` (its lease's run) ended: a result, or an error and traceback.

    ``retry``: a failure that may run again (False: dead-letter at once, ``retry_on``);
    ``retry_after``: seconds before that (``Retry(after=...)``; None: :func:`backoff`);
    ``cancelled``: someone asked the run to stop before it ended; ``progress``: its last
    progress not written yet.
    """

    job: ClaimedJob
    ok: bool
    duration: float
    result: Any = None
    error: str = ""
    traceback: str = ""
    retry: bool = True
    retry_after: float | None = None
    cancelled: bool = False
    progress: dict[str, Any] | None = None
    #: The result's size as JSON, bytes (about): writes are split to stay far from limits.
    size: int = 0
    #: The raised exception's class as ``module.QualName`` (a task's ``TaskError``).
    exception_path: str = ""
    #: Its completion was committed with the job's own writes (``@job(atomic=True)``, or the
    #: short-job path): the writer only logs it and notifies (``notify``: someone waits).
    committed: bool = False
    notify: bool = False
    #: How the attempt ended, once recorded (:func:`.endings.log`); ``job_finished`` sends it.
    ending: Ending | None = None


def backoff(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, with jitter."""
    base = conf.settings.RETRY_BACKOFF
    ceiling = conf.settings.RETRY_BACKOFF_MAX
    delay = min(ceiling, base * 2.0 ** min(attempt - 1, 60))  # 2**1024 would overflow
    return delay / 2 + random.uniform(0, delay / 2)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` (or just the type's name) for logs and the job's error.

    Never raises, whatever the exception's class does: an ``__str__`` that raises is itself
    described (``"Type: <str() raised ValueError: why>"``), by its class name at least.
    Recording an ending must not depend on the job's code behaving.
    """
    name = _class_name(exc)
    text = _message(exc)
    return f"{name}: {text}" if text else name


def failed(job: ClaimedJob, started: float, error: str) -> Outcome:
    """The outcome of an attempt that raised; call it from the ``except`` block.

    Never raises (see :func:`describe` and :func:`format_traceback`): a failure is recorded
    whatever the exception does when it is read."""
    raised = sys.exc_info()[1]
    return Outcome(
        job,
        False,
        time.monotonic() - started,
        # Storable whatever the exception said: no NUL, no lone surrogate, MAX_ERROR_BYTES.
        error=clean_text(error),
        traceback=clean_text(format_traceback(raised)),
        exception_path=_class_path(type(raised)) if raised is not None else "",
    )


#: The most exceptions (causes, contexts, members of groups) one traceback tells.
MAX_CHAIN = 32
#: BaseException's own links, read whatever a subclass defines under these names.
_LINKS = {
    name: BaseException.__dict__[name]
    for name in ("__cause__", "__context__", "__suppress_context__", "__traceback__")
}
_INSTANCE_DICT = BaseException.__dict__["__dict__"]
_GROUP_MEMBERS = BaseExceptionGroup.__dict__["exceptions"]
#: What the traceback module reads, as BaseException defines it (None: nothing).
_OWN = {
    **_LINKS,
    "__getattribute__": BaseException.__dict__["__getattribute__"],
    "__getattr__": None,
    "__notes__": None,
}
_TYPE_NAME = type.__dict__["__name__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_TYPE_MODULE = type.__dict__["__module__"]


def _class_name(exc: BaseException) -> str:
    """The name of ``exc``'s class, as the interpreter knows it (no metaclass in the way)."""
    name = _TYPE_NAME.__get__(type(exc))
    return str.__str__(name) if isinstance(name, str) else "exception"


def _class_path(kind: type[BaseException]) -> str:
    """``module.QualName`` of an exception class; "" if the class says something odd."""
    module, qualname = _TYPE_MODULE.__get__(kind), _TYPE_QUALNAME.__get__(kind)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{str.__str__(module)}.{str.__str__(qualname)}"
    return ""


def _message(exc: BaseException, nested: bool = False) -> str:
    """``str(exc)`` as a plain ``str``; if that raises, a description of what it raised."""
    try:
        return str.__str__(str(exc))  # a str subclass could format itself in turn
    except BaseException as error:  # whatever user code raised, even SystemExit: described
        what = _class_name(error)
        detail = "" if nested else _message(error, nested=True)
        return f"<str() raised {what}: {detail}>" if detail else f"<str() raised {what}>"


def format_traceback(exc: BaseException | None) -> str:
    """The traceback of ``exc`` and its causes and contexts, as Python prints it.

    Never raises and always ends: when a class of the chain defines the attributes the
    :mod:`traceback` module reads (a ``__cause__`` property that raises or makes a new
    exception each time, ``__notes__`` that raise, ``__getattr__``) or the chain is longer
    than :data:`MAX_CHAIN`, or formatting raises anyway, the chain is told here instead: each
    exception's frames and :func:`describe` line, following BaseException's own links.
    """
    if exc is None:
        return ""
    if _plain_chain(exc):
        try:
            return "".join(traceback.format_exception(exc))
        except BaseException:  # noqa: S110  # told below instead
            pass
    return _told_chain(exc)


def _defined(kind: type, name: str) -> Any:
    """What ``kind``, or the first class of its MRO that has it, defines as ``name``."""
    for base in kind.__mro__:
        if name in base.__dict__:
            return base.__dict__[name]
    return None


def _plain_chain(exc: BaseException) -> bool:
    """True if :mod:`traceback` may format ``exc``: no more than :data:`MAX_CHAIN` exceptions
    in its chain, none of whose classes overrides what that module reads."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        kind = type(current)
        if len(seen) > MAX_CHAIN or type(kind) is not type:
            return False
        if any(_defined(kind, name) is not own for name, own in _OWN.items()):
            return False
        notes = _INSTANCE_DICT.__get__(current).get("__notes__")
        if notes is not None and type(notes) not in (list, tuple):
            return False
        if isinstance(current, BaseExceptionGroup):
            if _defined(kind, "exceptions") is not _GROUP_MEMBERS:
                return False
            todo.extend(_GROUP_MEMBERS.__get__(current))
        todo.extend(
            link
            for link in (
                _LINKS["__cause__"].__get__(current),
                _LINKS["__context__"].__get__(current),
            )
            if link is not None
        )
    return True


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _told_chain(exc: BaseException) -> str:
    """What :func:`format_traceback` gives for a chain :mod:`traceback` may not read."""
    told: list[str] = []
    seen: set[int] = set()
    current = exc
    while True:
        seen.add(id(current))
        told.append(f"{_frames(current)}{describe(current)}\n")
        cause = _LINKS["__cause__"].__get__(current)
        context = _LINKS["__context__"].__get__(current)
        if cause is not None:
            following, link = cause, _CAUSE
        elif context is not None and not _LINKS["__suppress_context__"].__get__(current):
            following, link = context, _CONTEXT
        else:
            break
        if id(following) in seen:
            break
        if len(seen) >= MAX_CHAIN:
            told.append(f"({describe(following)} and more before it: cut at {MAX_CHAIN})\n\n")
            break
        told.append(link)
        current = following
    return "".join(reversed(told))


def _frames(exc: BaseException) -> str:
    """The ``Traceback (most recent call last):`` part of one exception; "" without one."""
    frames = _LINKS["__traceback__"].__get__(exc)
    if frames is None:
        return ""
    try:
        listed = "".join(traceback.format_list(traceback.extract_tb(frames)))
    except BaseException as error:  # a source file's loader raised, for one
        listed = f"  (frames not available: {describe(error)})\n"
    return f"Traceback (most recent call last):\n{listed}"


def succeeded(job: ClaimedJob, result: Any, started: float) -> Outcome:
    """The outcome of an attempt that returned ``result``; a failure if it cannot be stored."""
    try:
        size = result_size(result)
    except Exception as exc:
        return failed(
            job, started, f"The job returned a value that cannot be stored: {_message(exc)}"
        )
    return Outcome(job, True, time.monotonic() - started, result=result, size=size)


def timed_out(job: ClaimedJob, duration: float, trace: str) -> Outcome:
    """The outcome of an attempt that ran ``duration`` seconds, past its ``time_limit``
    (``trace``: where it was then, if known)."""
    error = describe(TimeLimitExceeded(job.time_limit))
    return Outcome(job, False, duration, error=error, traceback=trace)
