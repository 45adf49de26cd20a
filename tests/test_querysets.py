"""The claim query's plan: an index scan, however long the backlog."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_jobqueue.models import Job
from tests.conftest import requires_postgres
from tests.testapp.jobs import echo, noop, other_queue

pytestmark = pytest.mark.django_db


def _backlog() -> None:
    noop.enqueue_many([()] * 5_000)
    other_queue.enqueue_many([(i,) for i in range(2_000)])
    noop.using(group="g").enqueue_many([()] * 50)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Job._meta.db_table}")


@requires_postgres
def test_claim_of_every_queue_is_an_index_scan():
    _backlog()
    plan = Job.objects.explain_claim()
    assert "djq_claim_any" in plan, plan
    assert "Seq Scan on django_jobqueue_job c" not in plan, plan
    assert "Sort" not in plan.split("SubPlan")[0], plan


@requires_postgres
def test_claim_of_one_queue_is_an_index_scan():
    _backlog()
    plan = Job.objects.explain_claim(queue="other")
    assert "djq_claim_queue" in plan, plan
    assert "Seq Scan on django_jobqueue_job c" not in plan, plan


def test_claim_plan_uses_the_claim_index_on_sqlite():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's EXPLAIN QUERY PLAN")
    noop.enqueue_many([()] * 500)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    assert "djq_claim_any" in Job.objects.explain_claim()
    assert "djq_claim_queue" in Job.objects.explain_claim(queue="default")


# -- claims and groups under concurrent commits (PostgreSQL) ----------------------------------


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_group_never_runs_two_jobs_when_ids_commit_out_of_order():
    inserted, release = threading.Event(), threading.Event()

    def producer():
        with transaction.atomic():
            echo.using(group="g", job_id="first").enqueue(1)  # takes the lower id
            inserted.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=producer)
    thread.start()
    inserted.wait(10)
    echo.using(group="g", job_id="second").enqueue(2)  # higher id, committed first
    now = timezone.now()
    kw = {"queue": None, "limit": 10, "worker": "w", "now": now, "lease_until": now}
    assert [j.job_id for j in Job.objects.claim(**kw)] == ["second"]
    release.set()
    thread.join()
    assert Job.objects.claim(**kw) == [], "a group ran two jobs at once"


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_overtaking_finds_a_claimed_job_with_an_earlier_job_of_its_group_active():
    first = echo.using(group="g").enqueue(1)
    second = echo.using(group="g").enqueue(2)
    Job.objects.filter(job_id=second.id).update(status="running", attempts=1)
    rows = {row.job_id: row for row in Job.objects.all()}
    assert Job.objects.overtaking([(rows[second.id].pk, 1)]) == {rows[second.id].pk}
    Job.objects.filter(job_id=first.id).update(status="completed")
    assert Job.objects.overtaking([(rows[second.id].pk, 1)]) == set()
