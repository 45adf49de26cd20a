"""Time limits: ending an attempt that runs past its ``time_limit``.

At the deadline the main loop (:meth:`TimeLimits.expire`) reports the attempt as failed with
:class:`~django_jobqueue.exceptions.TimeLimitExceeded`, so its slot is free at once and the
writer retries or dead-letters it by the usual rules. Then it stops what it can:

- an ``async def`` job's task is cancelled (it gets ``asyncio.CancelledError``);
- a sync job's thread gets ``TimeLimitExceeded`` raised in it at its next bytecode
  (``PyThreadState_SetAsyncExc``); a thread blocked in C (a socket read, ``time.sleep``, a
  database query) gets it only when the call returns. Not on CPython 3.11 under a trace or
  profile function (:func:`interrupts_stall_tracers`): there the thread runs on untouched.

Whatever the attempt does afterwards is fenced off: :meth:`TimeLimits.settle` lets exactly one
outcome through per attempt (the deadline's or the job's own, whichever comes first), and the
writer's ``(id, attempts)`` fence keeps a late write from touching a later attempt.

Sync jobs with a time limit run on threads of their own, never on the runner's pool: an
interrupted thread is never reused (the exception may land after its job ended), so it leaves
and a new thread takes its place; jobs without a limit pay nothing for any of this. An
interrupted thread still alive :data:`STUCK_AFTER` seconds later is *abandoned*; when more
than ``concurrency`` are, the worker stops claiming, drains and exits with
:data:`EXIT_ABANDONED_THREADS`, for its supervisor to start a fresh process.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import itertools
import logging
import math
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from django.db import connections

from ..exceptions import TimeLimitExceeded
from ..serialization import printable
from .outcomes import Outcome, timed_out
from .running import RunningJob

logger = logging.getLogger("django_jobqueue.worker")

#: The exit status of a worker that stopped because too many threads of jobs past their
#: time limit were still alive (``EX_TEMPFAIL`` of sysexits.h: restart me).
EXIT_ABANDONED_THREADS = 75

#: Seconds after its interrupt that a thread still alive counts as abandoned (stuck in C).
STUCK_AFTER = 1.0


#: CPython's C API call that raises an exception in another thread (None elsewhere: sync jobs
#: past their limit then still fail and free their slot, but run on until they return).
_set_async_exc = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)


#: How the log and the traceback name a thread past its limit that was not interrupted.
_NOT_INTERRUPTED = "thread not interrupted (CPython 3.11 under a tracer), it runs on"


def interrupts_stall_tracers() -> bool:
    """True where an interrupt must not be sent: CPython 3.11 with a trace or profile function
    set (coverage, a debugger, ``cProfile``), in this thread or for new threads.

    There, while a thread blocked in C has an exception pending, every traced thread of the
    process spins at its next function call until that C call returns (3.11's tracing
    dispatch re-checks the interpreter-wide "eval breaker" at the call without moving on),
    and withdrawing the exception does not lower the breaker. 3.10 and 3.12+ do not spin.
    """
    if sys.version_info[:2] != (3, 11):
        return False
    hooks = (sys.gettrace(), sys.getprofile(), threading.gettrace(), threading.getprofile())
    return any(hook is not None for hook in hooks)


def interrupt_thread(thread_id: int) -> bool:
    """Raise :class:`TimeLimitExceeded` in the thread ``thread_id`` at its next bytecode
    (False if it was not sent). Ask :func:`interrupts_stall_tracers` first."""
    if _set_async_exc is None:  # pragma: no cover - not CPython
        return False
    changed = _set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(TimeLimitExceeded))
    if changed > 1:  # pragma: no cover - thread ids are unique; undo, as the C API asks
        _set_async_exc(ctypes.c_ulong(thread_id), None)
    return bool(changed == 1)


class TimeLimits:
    """The deadlines of running attempts that have a time limit, and the threads that run the
    sync ones.

    ``running`` is the runner's map of running attempts (an attempt past its limit leaves it
    at once); ``report(outcome)`` hands the time-limit failure to the writer. Every method but
    :meth:`settle` runs on the worker's main thread.
    """

    def __init__(self, running: dict[int, RunningJob], report: Callable[[Outcome], None]) -> None:
        self.running = running
        self.report = report
        #: When (``time.monotonic()``) :meth:`expire` has work: the earliest deadline, or the
        #: moment an interrupted thread would count as abandoned; ``inf``: never.
        self.due = math.inf
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, RunningJob]] = []
        self._order = itertools.count()
        #: Watched attempts that have not ended, each with how to cancel it (async jobs).
        self._live: dict[RunningJob, Callable[[], object] | None] = {}
        self._stale = 0  # heap entries of attempts that ended
        #: The thread running each started sync attempt (until it ends or is interrupted).
        self._threads: dict[RunningJob, threading.Thread] = {}
        #: Interrupted threads and when they count as abandoned if still alive.
        self._interrupted: list[tuple[threading.Thread, float]] = []
        self._jobs: queue.SimpleQueue[tuple[RunningJob, Callable[[RunningJob], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._idle = 0
        self._spawned = itertools.count(1)
        self._pool: set[threading.Thread] = set()
        self._told_why = False  # the warning that interrupts are off (tracers on 3.11)

    # -- the runner's side ------------------------------------------------------------------

    def watch(self, running: RunningJob) -> None:
        """Start the clock of ``running`` (its ``job.time_limit`` is set), before it starts."""
        assert running.job.time_limit is not None
        deadline = running.started + running.job.time_limit
        with self._lock:
            self._live[running] = None
            if self._stale > 64 and self._stale * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2] in self._live]
                heapq.heapify(self._heap)
                self._stale = 0
            heapq.heappush(self._heap, (deadline, next(self._order), running))
        self.due = min(self.due, deadline)

    def cancel_with(self, running: RunningJob, cancel: Callable[[], object]) -> None:
        """``cancel()`` stops the async attempt ``running`` (its future's ``cancel``: it
        cancels the task, or keeps it from starting)."""
        with self._lock:
            if running in self._live:
                self._live[running] = cancel

    def settle(self, running: RunningJob) -> bool:
        """From the attempt's thread once it ended: True if its outcome is to be reported,
        False if its time limit passed first (that failure was reported then)."""
        with self._lock:
            if running not in self._live:
                return False
            del self._live[running]
            self._stale += 1
            return True

    def submit(self, running: RunningJob, run: Callable[[RunningJob], None]) -> None:
        """Run the sync attempt ``running`` (watched) as ``run(running)`` on a thread of its
        own: an idle one, or a new one (so interrupted threads never shrink the pool)."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put((running, run))
        if spawn:
            thread = threading.Thread(
                target=self._serve,
                name=f"django-jobqueue-timed-job-{next(self._spawned)}",
                daemon=True,  # a thread stuck in C must not keep the process alive
            )
            self._pool.add(thread)
            thread.start()

    def close(self) -> None:
        """Let the idle threads go (the running ones have reported); abandoned threads stay
        until their call returns, or the process exits."""
        with self._lock:
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)
        for thread in list(self._pool):
            if thread not in {t for t, _ in self._interrupted}:
                thread.join(timeout=5.0)

    def _serve(self) -> None:
        thread = threading.current_thread()
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                running, run = item
                with self._lock:
                    start = running in self._live  # else its limit passed before it started
                    if start:
                        self._threads[running] = thread
                if start:
                    # An interrupt delivered after the job's own code had ended lands here.
                    with contextlib.suppress(TimeLimitExceeded):
                        run(running)
                    with self._lock:
                        if self._threads.pop(running, None) is None:
                            return  # interrupted: never reused, an exception may be pending
                with self._lock:
                    self._idle += 1
        except TimeLimitExceeded:
            pass  # an interrupt that came after the job ended; this thread leaves
        finally:
            self._pool.discard(thread)
            for _ in range(2):  # once more if a pending interrupt lands in the first try
                try:
                    connections.close_all()  # this thread's connections only
                    break
                except TimeLimitExceeded:
                    continue
                except Exception:
                    logger.debug("closing a job thread's connections failed", exc_info=True)
                    break

    # -- the loop's side ----------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Fail the attempts whose deadline passed; return how many abandoned threads are
        alive (interrupted more than :data:`STUCK_AFTER` seconds ago)."""
        expired: list[tuple[RunningJob, Callable[[], object] | None, str, str]] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                running = heapq.heappop(self._heap)[2]
                if running not in self._live:
                    self._stale = max(0, self._stale - 1)
                    continue
                cancel = self._live.pop(running)
                thread = self._threads.pop(running, None)
                trace = "The attempt had not started when its time limit passed."
                how = "task cancelled" if cancel is not None else "not started yet"
                if thread is not None and thread.ident is not None:
                    trace, how = _stack(thread.ident), "thread interrupted"
                    if interrupts_stall_tracers():
                        how = _NOT_INTERRUPTED
                        self._interrupted.append((thread, now))
                    elif interrupt_thread(thread.ident):
                        self._interrupted.append((thread, now + STUCK_AFTER))
                    else:  # pragma: no cover - not CPython, or the thread just ended
                        self._interrupted.append((thread, now))
                expired.append((running, cancel, trace, how))
        if not self._told_why and any(how == _NOT_INTERRUPTED for *_, how in expired):
            self._told_why = True
            logger.warning(
                "sync jobs past their time limit are not interrupted in this worker: it runs "
                "on CPython 3.11 with a trace or profile function set (coverage, a debugger, "
                "a profiler), where an interrupt pending in a thread blocked in C stalls every "
                "traced thread until that call returns. Their attempts still fail and free "
                "their slots; their threads run on until they return. Run the worker without "
                "the tracer, or on Python 3.12 or later, to interrupt them."
            )
        for running, cancel, trace, how in expired:
            self._fail(running, cancel, trace, how, now)
        self._interrupted = [(t, at) for t, at in self._interrupted if t.is_alive()]
        stuck = sum(1 for _, at in self._interrupted if at <= now)
        pending = [at for _, at in self._interrupted if at > now]
        with self._lock:
            self.due = min([*pending, self._heap[0][0] if self._heap else math.inf])
        return stuck

    def _fail(
        self,
        running: RunningJob,
        cancel: Callable[[], object] | None,
        trace: str,
        how: str,
        now: float,
    ) -> None:
        job = running.job
        if self.running.get(job.id) is running:
            del self.running[job.id]
        if cancel is not None:
            trace = _task_stack(running)
            cancel()
        logger.warning(
            "time limit passed id=%s name=%s attempt=%d time_limit=%gs: %s; its slot is free, "
            "its outcome will be discarded",
            printable(job.job_id),
            printable(job.name),
            job.attempts,
            job.time_limit,
            how,
        )
        self.report(timed_out(job, now - running.started, trace))


def _stack(thread_id: int) -> str:
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    return "".join(
        [
            "Where the attempt's thread was when its time limit passed (most recent call last):\n",
            *traceback.format_stack(frame),
        ]
    )


def _task_stack(running: RunningJob) -> str:
    task = running.task
    if task is None:
        return "The attempt was cancelled before it started."
    frames: list[tuple[FrameType, int]] = []
    awaited: Any = getattr(task, "get_coro", lambda: None)()
    # The task runs on another thread: a best-effort walk down the chain of awaits.
    while awaited is not None and len(frames) < 100:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno or 0))
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return "".join(
        [
            "Where the attempt's task was when its time limit passed (most recent call last):\n",
            *traceback.StackSummary.extract(frames).format(),
        ]
    )
