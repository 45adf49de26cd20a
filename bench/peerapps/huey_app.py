"""Huey with Redis, as its guide starts it: ``huey_consumer MODULE.huey``.

``RedisHuey`` on ``PEERS_REDIS_URL`` with its defaults (at-most-once: a task is popped from
the list before it runs; ``notify_result=False``, so a blocking ``Result.get`` polls from
50 ms up). The consumer's default is one process with one worker thread: the drain starts it
twice. The no-op returns None, which Huey does not store; the round trip's task returns True
and is waited for with ``Result.get(blocking=True)``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

from huey import RedisHuey

from bench.peerapps.mark import mark

huey = RedisHuey("peers", url=os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/13"))


@huey.task()
def noop() -> None:
    mark()


@huey.task()
def noop_rt() -> bool:
    mark()
    return True


def setup() -> None:
    pass


def version() -> str:
    return f"Huey {_version('huey')} (Redis, at-most-once)"


def describe() -> str:
    return "`huey_consumer bench.peerapps.huey_app.huey` (1 worker thread), started twice"


def worker_commands(*, drain: bool) -> list[list[str]]:
    argv = [str(Path(sys.executable).parent / "huey_consumer"), "bench.peerapps.huey_app.huey"]
    return [argv, argv] if drain else [argv]


def enqueue() -> None:
    noop()


def roundtrip(timeout: float) -> None:
    noop_rt().get(blocking=True, timeout=timeout)


def teardown() -> None:
    pass
