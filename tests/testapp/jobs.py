"""Module-level jobs used by the tests (autodiscovered, like a user's app)."""

import asyncio
import json
import os
import time
from pathlib import Path

from django.utils import timezone

from django_jobqueue import Retry, job
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
