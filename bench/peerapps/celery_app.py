"""Celery with Redis, as its "First steps" start it: ``celery -A MODULE worker``.

The app has a Redis broker and, for the round trip, the Redis result backend (First steps,
"Keeping results"), both on ``PEERS_REDIS_URL``. The worker command's default pool is
prefork with one child process per core (2 here): the drain starts it once. The enqueued
no-op task has ``ignore_result=True`` (as without a result backend, Celery's default); the
round trip's task stores its result and is waited for with ``AsyncResult.get()``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

from celery import Celery

from bench.peerapps.mark import mark

_URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/11")
app = Celery("peers", broker=_URL, backend=_URL)
app.conf.broker_connection_retry_on_startup = True  # silences a deprecation warning only


@app.task(ignore_result=True)
def noop() -> None:
    mark()


@app.task
def noop_rt() -> bool:
    mark()
    return True


def setup() -> None:
    pass


def version() -> str:
    return f"Celery {_version('celery')} (Redis broker and result backend)"


def describe() -> str:
    return "`celery -A bench.peerapps.celery_app worker` (prefork, 2 children), started once"


def worker_commands(*, drain: bool) -> list[list[str]]:
    celery = str(Path(sys.executable).parent / "celery")
    return [[celery, "-A", "bench.peerapps.celery_app", "worker"]]


def enqueue() -> None:
    noop.delay()


def roundtrip(timeout: float) -> None:
    noop_rt.delay().get(timeout=timeout)


def teardown() -> None:
    pass
