"""The deduplication table of the design, enqueue side, including concurrent producers."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import JobTimeoutError
from django_jobqueue.models import Job, JobResult
from tests.conftest import requires_postgres, run_concurrently, wait_until
from tests.testapp.jobs import add, always_fails, echo


@pytest.mark.django_db
def test_queued_or_running_id_gives_the_existing_job():
    first = add.using(job_id="same").enqueue(1, 2)
    second = add.using(job_id="same").enqueue(5, 5)
    assert first.created and not second.created
    assert second.status == "queued"
    Job.objects.filter(job_id="same").update(status="running")
    third = add.using(job_id="same").enqueue(1, 2)
    assert third.status == "running" and not third.created
    assert Job.objects.count() == 1
    assert Job.objects.get().args == [1, 2]


@pytest.mark.django_db
def test_completed_within_ttl_gives_the_cached_result(run_worker):
    add.using(job_id="c").enqueue(1, 2)
    run_worker()
    handle = add.using(job_id="c").enqueue(1, 2)
    assert (handle.status, handle.result, handle.created) == ("completed", 3, False)
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_failed_within_ttl_gives_the_failure(run_worker):
    always_fails.using(job_id="f", max_attempts=1).enqueue("bad")
    run_worker()
    handle = always_fails.using(job_id="f").enqueue("bad")
    assert (handle.status, handle.created) == ("failed", False)
    assert handle.error == "RuntimeError: bad"


@pytest.mark.django_db
def test_finished_past_ttl_runs_again_as_a_new_job(run_worker):
    add.using(job_id="old", result_ttl=0).enqueue(1, 2)
    run_worker()
    old = Job.objects.get(job_id="old")
    assert old.status == "completed" and JobResult.objects.filter(job=old).exists()
    handle = add.using(job_id="old").enqueue(2, 2)
    assert handle.created and handle.status == "queued"
    new = Job.objects.get(job_id="old")
    assert new.pk > old.pk and new.args == [2, 2]
    assert not JobResult.objects.filter(job_id=old.pk).exists()


@pytest.mark.django_db
def test_expired_failure_is_replaced_too():
    baker.make_recipe(
        "tests.failed_job", job_id="gone", expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert add.using(job_id="gone").enqueue(1, 1).created


@pytest.mark.django_db(transaction=True)
def test_concurrent_enqueues_of_one_id_make_one_job():
    """Eight threads (eight connections) race on one id: one job, nobody sees an error."""

    def produce() -> object:
        return add.using(job_id="race").enqueue(1, 2)

    results = run_concurrently(*[produce] * 8)
    assert all(not isinstance(r, Exception) for r in results), results
    assert len(results) == 8
    assert sum(r.created for r in results) == 1
    assert Job.objects.filter(job_id="race").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_wait_of_weeks_on_a_fixed_id_is_accepted(run_worker):
    """PostgreSQL's lock_timeout stops at about 24.8 days: a longer wait is capped there."""
    add.using(job_id="long-wait").enqueue(1, 2)
    run_worker()
    assert add.using(job_id="long-wait", timeout=25 * 86400).enqueue_and_wait(1, 2) == 3


# -- a fixed id held by an uncommitted transaction (PostgreSQL) -------------------------------


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_waiter_behind_an_uncommitted_job_of_its_id_still_times_out():
    inserted, release = threading.Event(), threading.Event()

    def holder():
        with transaction.atomic():
            echo.using(job_id="locked").enqueue(1)
            inserted.set()
            release.wait(10)  # holds the row lock until the waits below are over
        connection.close()

    thread = threading.Thread(target=holder)
    thread.start()
    inserted.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(JobTimeoutError):
            echo.using(job_id="locked", timeout=0.5).enqueue_and_wait(1)
        assert time.monotonic() - started < 2

        async def unrelated_waits():
            blocked = [
                asyncio.ensure_future(echo.using(job_id="locked", timeout=1).aenqueue_and_wait(1))
                for _ in range(4)
            ]
            # All four are stuck on the row lock, each holding a thread, before the
            # unrelated wait begins.
            await asyncio.to_thread(_wait_for_lock_waiters, 4)
            began = time.monotonic()
            with pytest.raises(JobTimeoutError):
                await echo.using(timeout=1).aenqueue_and_wait(2)  # no worker runs it
            took = time.monotonic() - began
            await asyncio.gather(*blocked, return_exceptions=True)
            return took

        assert asyncio.run(unrelated_waits()) < 2
    finally:
        release.set()
        thread.join()


def _wait_for_lock_waiters(count: int) -> None:
    """Wait until ``count`` sessions of the test database wait on a lock (PostgreSQL)."""

    def waiting() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0]

    try:
        wait_until(lambda: waiting() >= count, timeout=5)
    finally:
        connection.close()  # this runs in a throwaway executor thread
