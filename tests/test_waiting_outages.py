"""A waiter whose job is written rides out a lost database connection (PostgreSQL
restarting, its session killed): it reconnects and gets the job's value."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, connections

from django_jobqueue.models import Job
from django_jobqueue.notifications.names import RESULT_IN_MESSAGE_BYTES
from tests.conftest import PGBOUNCER, requires_postgres, wait_until
from tests.testapp.jobs import returns_bytes

pytestmark = [requires_postgres, pytest.mark.django_db(transaction=True)]

#: A result too large to ride in the "finished" message: the waiter reads the row itself.
BIG = RESULT_IN_MESSAGE_BYTES + 1


@pytest.fixture(autouse=True)
def _close_the_killed_sessions() -> Iterator[None]:
    """The sessions these tests end belong to threads that outlive a test too: the runtime's
    database threads, and asgiref's one thread for thread-sensitive calls made from a plain
    event loop. Close their connections after each test, so the next test's first query on
    them does not meet a session the server ended."""
    yield
    from asgiref.sync import sync_to_async

    from django_jobqueue.notifications import runtime

    runtime.close()
    asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture
def slow_safety_net(settings: Any) -> None:
    """The safety net polls once a minute: the waiter's own read is what answers."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 60}


def _terminate_the_others() -> None:
    """End every session of the test database but this thread's (the waiter's among them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _refused_reads(caplog: Any) -> int:
    """The waiters' reads refused because the database would not take a new session."""
    return sum(
        "its read of the database failed" in r.getMessage()
        and "not currently accepting connections" in r.getMessage()
        for r in caplog.records
    )


@contextmanager
def _refusing_connections() -> Iterator[None]:
    """New sessions to the test database are refused (as while PostgreSQL restarts); the
    ones open stay."""
    import psycopg

    params = connection.get_connection_params()
    params["dbname"] = "postgres"  # a database may not refuse the session that says so
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        try:
            yield
        finally:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


def _subscribed(job_id: str) -> bool:
    return Job.objects.filter(job_id=job_id, notify=True).exists()


def _wait_in_thread(job_id: str, results: list[Any]) -> threading.Thread:
    """``handle.wait()`` in a thread of its own, once it is subscribed to the job."""
    from django_jobqueue import get_job

    def wait() -> None:
        try:
            handle = get_job(job_id)
            assert handle is not None
            results.append(handle.wait(timeout=60))
        except BaseException as exc:
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: _subscribed(job_id))
    return thread


def _await_in_thread(job_id: str, results: list[Any]) -> threading.Thread:
    """``await handle.await_result()`` in an event loop of its own, once it is subscribed."""
    from django_jobqueue import aget_job

    async def main() -> Any:
        handle = await aget_job(job_id)
        assert handle is not None
        return await handle.await_result(timeout=60)

    def wait() -> None:
        try:
            results.append(asyncio.run(main()))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: _subscribed(job_id))
    return thread


def test_a_waiter_whose_session_is_killed_reconnects_and_gets_the_value(
    run_worker, slow_safety_net
):
    handle = returns_bytes.enqueue(BIG)
    results: list[Any] = []
    thread = _wait_in_thread(handle.id, results)
    _terminate_the_others()
    run_worker()
    thread.join(30)
    assert results == ["x" * BIG]


@pytest.mark.skipif(
    PGBOUNCER,
    reason="through PgBouncer the pooler keeps its server sessions and the waiter its client "
    "session: no new session is asked of PostgreSQL, so none is refused",
)
@pytest.mark.parametrize("start", [_wait_in_thread, _await_in_thread], ids=["sync", "async"])
def test_a_waiter_rides_out_the_database_refusing_connections(
    run_worker, slow_safety_net, caplog, start
):
    handle = returns_bytes.enqueue(BIG)
    results: list[Any] = []
    thread = start(handle.id, results)
    with caplog.at_level(logging.DEBUG, logger="django_jobqueue.waiting"):
        with _refusing_connections():
            _terminate_the_others()
            run_worker()  # on this thread's session, which stays open
            wait_until(lambda: _refused_reads(caplog) >= 2, timeout=20)
            assert thread.is_alive() and not results
        thread.join(30)
    assert results == ["x" * BIG]
