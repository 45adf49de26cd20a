"""Module-level jobs used by the tests (autodiscovered, like a user's app)."""

import asyncio
import os
import time
from pathlib import Path

from django.utils import timezone

from django_jobqueue import job
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


@job
def timed(tag, seconds=0.0):
    """Record when this run started and ended (one ``Interval`` row), sleeping in between."""
    started = timezone.now()
    if seconds:
        time.sleep(seconds)
    Interval.objects.create(tag=tag, pid=os.getpid(), started=started, ended=timezone.now())
    return tag
