"""Dramatiq with Redis, as its user guide starts it: ``dramatiq MODULE``.

``RedisBroker`` on ``PEERS_REDIS_URL``, and the ``Results`` middleware with its Redis backend
for the round trip. The command's default is one process per core (2 here) of 8 threads
each: the drain starts it once. The no-op actor stores no result (Dramatiq's default); the
round trip's actor has ``store_results=True`` and is waited for with
``Message.get_result(block=True)``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peerapps.mark import mark

_URL = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/12")
broker = RedisBroker(url=_URL)
broker.add_middleware(Results(backend=RedisBackend(url=_URL)))
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    mark()


@dramatiq.actor(store_results=True)
def noop_rt() -> bool:
    mark()
    return True


def setup() -> None:
    pass


def version() -> str:
    return f"Dramatiq {_version('dramatiq')} (Redis broker, Redis results)"


def describe() -> str:
    return "`dramatiq bench.peerapps.dramatiq_app` (2 processes x 8 threads), started once"


def worker_commands(*, drain: bool) -> list[list[str]]:
    return [[str(Path(sys.executable).parent / "dramatiq"), "bench.peerapps.dramatiq_app"]]


def enqueue() -> None:
    noop.send()


def roundtrip(timeout: float) -> None:
    noop_rt.send().get_result(block=True, timeout=int(timeout * 1000))


def teardown() -> None:
    pass
