"""django-jobqueue as a quickstart user runs it: ``python manage.py runjobworker``.

Settings: ``bench.peerapps.djq_settings`` (``bench/settings.py`` on PostgreSQL + Redis, i.e.
``channels_redis.core.RedisChannelLayer`` and the library's default ``POLL_INTERVAL``, plus
the app of the benchmark's job). ``BENCH_CHANNEL_LAYER=pubsub`` switches to
``RedisPubSubChannelLayer``; ``PEERS_DJQ_CONCURRENCY`` adds ``--concurrency N``. The worker
command's default is one process of 4 job threads per core (8 on 2 cores, see
``django_jobqueue.worker.default_concurrency``): the drain starts it twice.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from typing import Any

_noop: Any = None


def _concurrency() -> list[str]:
    value = os.environ.get("PEERS_DJQ_CONCURRENCY")
    return ["--concurrency", value] if value else []


def setup() -> None:
    global _noop
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from bench.peerapps.djqapp.jobs import noop

    _noop = noop


def version() -> str:
    layer = os.environ.get("BENCH_CHANNEL_LAYER", "default")
    name = "RedisPubSubChannelLayer" if layer == "pubsub" else "RedisChannelLayer"
    try:
        own = _version("django-jobqueue")
    except Exception:  # not installed: this checkout, on PYTHONPATH
        own = "checkout " + _commit()
    return f"django-jobqueue {own} ({name})"


def _commit() -> str:
    """The checkout's commit (with ``+`` when its files differ from it), or ``?``."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], check=False).returncode
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+" if dirty else "")


def describe() -> str:
    extra = " ".join(_concurrency())
    return f"`python -m django runjobworker{' ' + extra if extra else ''}`, started twice"


def worker_commands(*, drain: bool) -> list[list[str]]:
    argv = [sys.executable, "-m", "django", "runjobworker", *_concurrency()]
    return [argv, argv] if drain else [argv]


def enqueue() -> None:
    _noop.enqueue()


def roundtrip(timeout: float) -> None:
    _noop.using(timeout=timeout).enqueue_and_wait()


def teardown() -> None:
    from django.db import connections

    connections.close_all()
