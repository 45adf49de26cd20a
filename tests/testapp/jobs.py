"""Module-level jobs used by the tests (autodiscovered, like a user's app)."""

import asyncio
import json
import os
import threading
import time
from pathlib import Path

from django.utils import timezone

from django_jobqueue import Retry, TimeLimitExceeded, job
from django_jobqueue.registry import registry
from tests.testapp.models import Execution, Interval


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


@job(max_attempts=1)
def open_missing_file(name):
    """Fails with a message holding a file name that is not valid UTF-8, as ``os.fsdecode``
    gives it (a lone surrogate)."""
    import os

    path = os.fsdecode(b"/nonexistent/" + name.encode() + b"\xff")
    raise FileNotFoundError(f"No such file: {path}")


@job(max_attempts=1)
def returns_bytes(size):
    return "x" * size


# -- the worker's controls (tests/test_controls_worker.py) ------------------------------------


@job(takes_context=True, max_attempts=3, queue="facts")
def context_facts(ctx, fail_until):
    """Record this attempt's context (one Execution row), fail until attempt ``fail_until``."""
    facts = [ctx.job_id, ctx.attempt, ctx.max_attempts, ctx.queue, ctx.worker]
    Execution.objects.create(tag=json.dumps(facts), pid=os.getpid())
    if ctx.attempt <= fail_until:
        raise ValueError(f"attempt {ctx.attempt} fails")
    return facts


@job(takes_context=True)
async def async_context_facts(ctx):
    return [ctx.job_id, ctx.attempt, ctx.max_attempts, ctx.queue, ctx.worker]


@job(retry_on=(ConnectionError, TimeoutError), max_attempts=3)
def call_partner(kind):
    """Raise a ConnectionError (``kind="connection"``) or a ValueError, recording each run."""
    Execution.objects.create(tag=f"partner-{kind}", pid=os.getpid())
    raise {"connection": ConnectionError, "value": ValueError}[kind](f"{kind} trouble")


@job(takes_context=True, max_attempts=2)
def retry_later(ctx, after, reason=""):
    """Ask for a retry ``after`` seconds on every attempt but the second of two."""
    Execution.objects.create(tag=f"retry-later-{ctx.attempt}", pid=os.getpid(), started=None)
    if ctx.attempt == 1 or ctx.max_attempts == 1:
        raise Retry(after=after, reason=reason)
    return ctx.attempt


def _wait_for(path, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


@job(takes_context=True)
def progress_steps(ctx, go_path, many=0):
    """Report 1/3, wait for ``go_path``, then report 2/3 and 3/3 (and ``many`` more)."""
    ctx.set_progress(1, total=3, message="one")
    if go_path:
        _wait_for(go_path)
    ctx.set_progress(2, total=3, message="two")
    for step in range(many):
        ctx.set_progress(step, total=many, message="many")
    ctx.set_progress(3, total=3, message="done")
    return "ok"


@job(takes_context=True)
def progress_gates(ctx, gate_dir, steps=3):
    """Report 0 of ``steps``, then step k once the file ``gate_dir/k`` exists; return ``steps``."""
    ctx.set_progress(0, total=steps, message="waiting for gate 1")
    for step in range(1, steps + 1):
        _wait_for(Path(gate_dir) / str(step))
        ctx.set_progress(step, total=steps, message=f"passed gate {step}")
    return steps


@job(takes_context=True)
def until_cancelled(ctx, marker_path, seconds=60.0):
    """Mark that it started, then check ``cancel_requested`` until it is set; return what it
    saw (the job returns normally: its run still ends cancelled)."""
    Path(marker_path).write_text("started")
    deadline = time.monotonic() + seconds
    while not ctx.cancel_requested:
        if time.monotonic() > deadline:
            return "never cancelled"
        time.sleep(0.01)
    Path(marker_path).write_text("saw cancel_requested")
    return "stopped"


@job
async def async_until_cancelled(marker_path, seconds=60.0):
    """Mark that it started, then sleep; record a CancelledError if one comes."""
    Path(marker_path).write_text("started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        Path(marker_path).write_text("got CancelledError")
        raise
    return "slept"


# -- a sleeper, results the database refuses, an echo, an async query ------------------------


@job
def sleeper(seconds):
    time.sleep(seconds)  # the job's own work
    return seconds


@job
def huge_int():
    """A result json.dumps accepts and the database (or the round trip) refuses."""
    return 10**5000


@job
def surrogate():
    """A lone surrogate: valid Python str, refused as a stored result."""
    return "\ud800"


@job
def echo(value):
    return value


@job
async def async_count():
    return await Execution.objects.acount()


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


@job
def timed(tag, seconds=0.0):
    """Record when this run started and ended (one ``Interval`` row), sleeping in between."""
    started = timezone.now()
    if seconds:
        time.sleep(seconds)
    Interval.objects.create(tag=tag, pid=os.getpid(), started=started, ended=timezone.now())
    return tag


@job(atomic=True)
def atomic_record(tag, marker_path="", release_path="", fail=False):
    """``atomic=True``: insert one execution row, then (with ``marker_path``) mark that the
    row is written and wait (bounded) for ``release_path`` to exist; ``fail`` raises after
    the write. Its row commits with its completion or not at all."""
    Execution.objects.create(tag=tag, pid=os.getpid())
    if marker_path:
        Path(marker_path).write_text(str(os.getpid()))
    if release_path:
        deadline = time.monotonic() + 60
        while not Path(release_path).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    if fail:
        raise RuntimeError(f"{tag} failed after its write")
    return tag


@job
def cuts_the_window(arm_path, tag):
    """Record one execution; if ``arm_path`` exists, remove it and first terminate the
    database sessions idle in a transaction (the worker's short-path window, on
    PostgreSQL), as a network cut or a server restart would."""
    from django.db import connection

    if Path(arm_path).exists():
        Path(arm_path).unlink()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
            )
    Execution.objects.create(tag=tag, pid=os.getpid())


class _StrRaises(Exception):
    """An error that formats an attribute set after ``__init__`` (common in client libraries)."""

    def __str__(self):
        return f"status {self.status}"  # no such attribute: AttributeError


class _ReprRaises(Exception):
    def __str__(self):
        raise SystemExit("not from str either")

    def __repr__(self):
        raise RuntimeError("nor repr")


class _CauseRaises(Exception):
    @property
    def __cause__(self):
        raise ValueError("no cause to give")

    @property
    def __notes__(self):
        raise ValueError("no notes either")


class _EndlessContext(Exception):
    @property
    def __context__(self):
        return _EndlessContext()  # a new one each time: a chain that never ends


#: The errors that describe themselves badly, by the name :func:`raises_hostile` takes.
HOSTILE_ERRORS = {
    "str": _StrRaises,
    "repr": _ReprRaises,
    "cause": _CauseRaises,
    "endless": _EndlessContext,
}


def _raise_hostile(kind):
    error = HOSTILE_ERRORS[kind]()
    try:
        raise RuntimeError("the first failure")
    except RuntimeError as first:
        first.__context__ = error  # a loop: error -> first -> error
        raise error from first


@job(max_attempts=1)
def raises_hostile(kind):
    _raise_hostile(kind)


@job(max_attempts=2)
async def async_raises_hostile(kind):
    await asyncio.sleep(0)
    _raise_hostile(kind)


@job(takes_context=True)
def collects(ctx, tag):
    """Workflows: record one execution and return its parents' results (sorted by id)."""
    Execution.objects.create(tag=tag, pid=os.getpid(), started=timezone.now())
    return {"tag": tag, "parents": dict(sorted(ctx.parent_results.items()))}


@job(takes_context=True)
async def async_collects(ctx, tag):
    """Workflows: ``collects`` for ``async def`` jobs (no database of its own)."""
    return {"tag": tag, "parents": dict(sorted(ctx.parent_results.items()))}


_held: list[bytes] = []


@job
def hold_memory(megabytes):
    """Keep ``megabytes`` MB of this process's memory for good (a leak, for --max-memory)."""
    _held.append(b"\x01" * (megabytes * 2**20))  # written, so resident
    return len(_held)


from tests.testapp import unique_jobs  # noqa: E402, F401 - its jobs, for the workers

# A worker started with DJQ_UNREGISTER="name,..." runs "the previous release", which lacks
# those jobs (tests/test_deploys.py: a rolling deploy).
for _name in filter(None, os.environ.get("DJQ_UNREGISTER", "").split(",")):
    registry.unregister(_name)
