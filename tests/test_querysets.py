"""The claim query's plan: an index scan, however long the backlog."""

from __future__ import annotations

import pytest
from django.db import connection

from django_jobqueue.models import Job
from tests.conftest import requires_postgres
from tests.testapp.jobs import noop, other_queue

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
