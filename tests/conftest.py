from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections

from django_jobqueue.notifications import reset_hub
from django_jobqueue.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
REDIS = bool(os.environ.get("REDIS_URL"))
POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")

requires_redis = pytest.mark.skipif(not REDIS, reason="needs REDIS_URL (channels_redis)")
#: DJQ_QUEUE_DATABASE=queue: the whole run keeps the queue on its own test database.
QUEUE_DATABASE = os.environ.get("DJQ_QUEUE_DATABASE", "")
requires_postgres = pytest.mark.skipif(not POSTGRES, reason="needs DATABASE_URL (PostgreSQL)")
#: scripts/test-pgbouncer: DATABASE_URL is PgBouncer in transaction pooling mode.
PGBOUNCER = os.environ.get("DJQ_PGBOUNCER") == "1"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail after
    ``timeout`` seconds. The one bounded wait of the suite: on a row, a log line, a page."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server to start, or to find
    closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_concurrently(*callables: Callable[[], Any], timeout: float = 30.0) -> list[Any]:
    """Run each callable in its own thread, all released at once by a ``threading.Barrier``;
    join them within ``timeout`` seconds and return their results in order. The first
    error a callable raised is raised here; each thread closes its database connections."""
    barrier = threading.Barrier(len(callables))
    results: list[Any] = [None] * len(callables)
    errors: list[BaseException] = []

    def run(index: int, function: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[index] = function()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's, before the test database is dropped

    threads = [
        threading.Thread(target=run, args=(index, function), daemon=True)
        for index, function in enumerate(callables)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    if stuck:
        raise AssertionError(f"{stuck} of {len(threads)} threads still running after {timeout}s")
    return results


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With DJQ_QUEUE_DATABASE, every test that uses the database may use both."""
    if not QUEUE_DATABASE:
        return
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is None and "_django_db_helper" not in getattr(item, "fixturenames", ()):
            continue
        kwargs = dict(marker.kwargs) if marker is not None else {}
        if "databases" not in kwargs:
            marker = pytest.mark.django_db(**{**kwargs, "databases": "__all__"})
            item.add_marker(marker, append=False)


@pytest.fixture(autouse=True)
def _fresh_hub() -> Iterator[None]:
    reset_hub()
    yield
    reset_hub()


@pytest.fixture
def run_worker() -> Callable[..., Worker]:
    """Run an in-process worker in burst mode (until nothing is ready) and return it.

    Unlike ``runjobworker --burst`` it does not wait for retries still backing off (pass
    ``wait_for_retries=True`` for that): tests look at one pass over what is ready."""

    def run(**options: Any) -> Worker:
        options.setdefault("burst", True)
        options.setdefault("wait_for_retries", False)
        worker = Worker(**options)
        worker.run()
        return worker

    return run


class WorkerProcesses:
    """Start real ``manage.py runjobworker`` subprocesses against the test database."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp_path = tmp_path

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = self.tmp_path / f"worker-{len(self.procs)}.log"
        output = log.open("w")
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.worker_settings",
            "DJQ_TEST_DB": connection.settings_dict["NAME"],
            "DJQ_TEST_QUEUE_DB": connections["queue"].settings_dict["NAME"],
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runjobworker", "-v", "2", *args],
            cwd=ROOT,
            env=full_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output.close()  # the child has its own copy of the descriptor
        proc.log_path = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    @staticmethod
    def log(proc: subprocess.Popen[str]) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        """SIGTERM (a graceful stop: a worker measured by coverage saves its data), then
        SIGKILL what is still running after 10 s."""
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


@pytest.fixture
def worker_processes(tmp_path: Path, transactional_db: Any) -> Iterator[WorkerProcesses]:
    if connection.vendor == "sqlite" and connection.settings_dict["NAME"].startswith(
        ("file:memorydb", ":memory:")
    ):
        pytest.skip("worker subprocesses need a file or server database")
    procs = WorkerProcesses(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _features_of_every_alias(django_db_setup: Any, django_db_blocker: Any) -> None:
    """Model checks ask each alias's backend whether it supports JSON fields (``manage.py
    check``, which many tests call); on SQLite that is a query, cached per connection. The
    default alias learnt it while the test databases were made; the second one ("queue", for
    tests/test_owndb.py) learns it here, once, so that a check inside a test that may not use
    that database does not query it (Django 6.1 checks every alias)."""
    from django.db import connections

    with django_db_blocker.unblock():
        for alias in connections:
            assert connections[alias].features.supports_json_field


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Threads the tests started (executor threads, asgiref's sync thread) keep connections
    that PostgreSQL would refuse to drop the test database over; end them at the close."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from django_jobqueue.notifications import runtime

    runtime.close()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    if not POSTGRES:
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
