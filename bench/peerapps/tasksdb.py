"""django-tasks-db: Django's Tasks framework with its database backend, ``db_worker``.

Settings ``bench.peerapps.tasksdb_settings``: ``TASKS`` with
``django_tasks_db.DatabaseBackend`` on ``PEERS_PG_URL`` (its own database; migrated at
set-up); on Django 5.2 the ``django-tasks`` backport provides ``@task``. ``python -m django
db_worker`` with its defaults is one process running one task at a time, checking the table
every second (``--interval 1``) when it found nothing: the drain starts it twice. The round
trip enqueues and calls ``TaskResult.refresh()`` every millisecond until the task is
finished (the framework has no blocking wait).
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import version as _version
from typing import Any

_noop: Any = None


def setup() -> None:
    global _noop
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from bench.peerapps.tasksdbapp.tasks import noop

    _noop = noop


def version() -> str:
    import django

    return f"django-tasks-db {_version('django-tasks-db')} (Django {django.get_version()})"


def describe() -> str:
    return "`python -m django db_worker`, started twice"


def worker_commands(*, drain: bool) -> list[list[str]]:
    argv = [sys.executable, "-m", "django", "db_worker"]
    return [argv, argv] if drain else [argv]


def enqueue() -> None:
    _noop.enqueue()


def roundtrip(timeout: float) -> None:
    result = _noop.enqueue()
    deadline = time.monotonic() + timeout
    while not result.is_finished:
        if time.monotonic() >= deadline:
            raise TimeoutError(f"task {result.id} still {result.status}")
        time.sleep(0.001)
        result.refresh()
    if result.status != "SUCCESSFUL":
        raise RuntimeError(f"task {result.id} ended {result.status}")


def teardown() -> None:
    from django.db import connections

    connections.close_all()
