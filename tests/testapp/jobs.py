"""Module-level jobs used by the tests (autodiscovered, like a user's app)."""

import asyncio
import os
import threading
import time
from pathlib import Path

from django.utils import timezone

from django_jobqueue import TimeLimitExceeded, job
from tests.testapp.models import Execution


@job
def add(x, y):
    return x + y


@job
def noop():
    return None


@job(queue="other")
def other_queue(value):
    return value


@job
async def async_add(x, y):
    await asyncio.sleep(0)
    return x + y


@job(max_attempts=3)
def always_fails(message="boom"):
    raise RuntimeError(message)


@job(max_attempts=3)
def fails_then_succeeds(counter_path, fail_times):
    """Fails ``fail_times`` times (counted in a file), then returns the attempt number."""
    path = Path(counter_path)
    attempts = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempts))
    if attempts <= fail_times:
        raise ValueError(f"failing attempt {attempts}")
    return attempts


@job
def returns_unserializable():
    return {1, 2, 3}


@job
def record(tag, sleep=0.0):
    """Insert one row per execution, so tests can count executions across processes."""
    started = timezone.now()
    if sleep:
        time.sleep(sleep)
    Execution.objects.create(tag=tag, pid=os.getpid(), started=started)
    return tag


@job
def sleep_then_record(tag, seconds, marker_path=""):
    """Mark that it started (a file), sleep, then record one execution."""
    if marker_path:
        Path(marker_path).write_text(str(os.getpid()))
    time.sleep(seconds)
    Execution.objects.create(tag=tag, pid=os.getpid())
    return tag


# -- time limits ------------------------------------------------------------------------------


class Gate:
    """A gate a job blocks on in C (a lock's acquire, which no interrupt breaks) until the test
    opens it; it remembers the blocked thread and what happened to it afterwards."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.thread: threading.Thread | None = None
        self.events: list[str] = []

    def wait(self) -> None:
        self.thread = threading.current_thread()
        self._lock.acquire()

    def open(self) -> None:
        self._lock.release()


#: Gates by name, for in-process workers; a test makes a fresh one per run.
GATES: dict[str, Gate] = {}


@job
def blocks_on_gate(gate):
    """Block in C until the gate opens; then note whether the time limit's interrupt landed."""
    try:
        GATES[gate].wait()
        time.sleep(0.01)  # Python code again: a pending interrupt lands here at the latest
    except TimeLimitExceeded:
        GATES[gate].events.append("interrupted")
        raise
    GATES[gate].events.append("returned")
    return gate


@job
def slow_first_attempt(counter_path, gate):
    """Attempt 1 blocks on the gate, swallows the time limit's interrupt and returns "late";
    later attempts return at once."""
    path = Path(counter_path)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if attempt > 1:
        return f"attempt {attempt}"
    try:
        GATES[gate].wait()
        time.sleep(0.01)
    except TimeLimitExceeded:
        GATES[gate].events.append("swallowed the interrupt")
    GATES[gate].events.append("returned late")
    return "late"


#: Tags of the ``naps`` runs the time limit's interrupt reached.
INTERRUPTED: list[str] = []


@job
def naps(tag, seconds=30.0):
    """Nap in short sleeps (Python code between them) for ``seconds``: interruptible."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except TimeLimitExceeded:
        INTERRUPTED.append(tag)
        raise
    return tag


@job(time_limit=0.3, max_attempts=1)
def naps_limited(tag, seconds=30.0):
    """``naps`` with a time limit on the decorator."""
    return naps.func(tag, seconds)


#: What the ``async_naps`` runs saw: "<tag>:cancelled" when CancelledError reached them.
ASYNC_EVENTS: list[str] = []


@job
async def async_naps(tag, seconds=30.0):
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        ASYNC_EVENTS.append(f"{tag}:cancelled")
        raise
    finally:
        ASYNC_EVENTS.append(f"{tag}:finally")
    return tag


@job
def waits_for_file(path, tag):
    """Wait (in short sleeps) until the file ``path`` exists, then record one execution."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    Execution.objects.create(tag=tag, pid=os.getpid())
    return tag
