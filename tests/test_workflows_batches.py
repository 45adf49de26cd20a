"""Batches beyond their basics: how long a batch's row is kept (pruned with the last of
its jobs and callback jobs, by the workers and ``jobqueue prune``), a batch of 100,000 jobs,
and the admin's batch pages."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import batch, get_batch
from django_jobqueue.models import Job, JobBatch
from django_jobqueue.querysets.batches import JOIN_BATCH
from django_jobqueue.querysets.producing import INSERT_BATCH
from django_jobqueue.routers import queue_database
from django_jobqueue.testing import run_jobs
from django_jobqueue.worker.inline import run_now
from django_jobqueue.worker.upkeep import Upkeep
from tests.conftest import POSTGRES, wait_until
from tests.testapp.jobs import add, collects, noop
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def _prune_as_a_worker() -> None:
    Upkeep("default", held=list, lost=print, dead_letter=print).prune()  # type: ignore[arg-type]


def _prune_as_the_command() -> None:
    call_command("jobqueue", "prune", stdout=StringIO())


@pytest.mark.parametrize("prune", [_prune_as_a_worker, _prune_as_the_command])
def test_a_batch_row_is_kept_until_its_callbacks_ran_and_goes_with_its_last_job(prune):
    with batch(on_complete=collects.using(result_ttl=3600).bind("done"), name="kept") as b:
        first = add.using(result_ttl=0).enqueue(1, 2)
        add.using(result_ttl=0).enqueue(3, 4)
    run_now(first.id)
    prune()  # one job pruned, one pending: the batch is not finished
    assert JobBatch.objects.filter(pk=b.id).exists() and not get_batch(b.id).finished
    run_jobs()  # the last job, then the callback
    assert list(Execution.objects.values_list("tag", flat=True)) == ["done"]
    prune()  # its jobs are pruned, but its callback's result is kept an hour
    assert list(Job.objects.values_list("job_id", flat=True)) == [f"batch:{b.id}:on_complete"]
    assert get_batch(b.id).counts["completed"] == 2
    Job.objects.update(expires_at=timezone.now())
    prune()
    assert not Job.objects.exists() and get_batch(b.id) is None


def test_a_batch_without_callbacks_goes_with_its_jobs_and_an_open_one_is_kept():
    with batch(name="plain") as b:
        noop.using(result_ttl=0).enqueue()
    opened = batch(name="open")
    opened.__enter__()  # not sealed: more jobs may join, whatever is pruned
    try:
        run_jobs()
        _prune_as_the_command()
        assert list(JobBatch.objects.values_list("name", flat=True)) == ["open"]
        assert get_batch(b.id) is None
    finally:
        opened.__exit__(None, None, None)


#: A batch of 100,000 jobs on PostgreSQL; SQLite (a file, one writer) is the other leg's
#: smaller N: the same statements per 1,000 jobs, in a time that fits the suite.
BIG_BATCH = 100_000 if POSTGRES else 5_000


def test_a_batch_of_100000_jobs_enqueues_in_bounded_statements_and_fires_once(
    worker_processes,
):
    database = connections[queue_database()]
    with (
        CaptureQueriesContext(database) as queries,
        batch(on_complete=collects.bind("done"), name="big") as b,
    ):
        noop.enqueue_many([()] * BIG_BATCH)
    statements = [q["sql"][:60] for q in queries.captured_queries]
    # One INSERT per INSERT_BATCH jobs; their joining (PostgreSQL: one UPDATE, SQLite: one
    # per INSERT); the batch row's writes, savepoints and SQLite's write lock: a few more.
    joins = 1 if POSTGRES else BIG_BATCH // JOIN_BATCH
    assert len(statements) <= BIG_BATCH // INSERT_BATCH + joins + 15, statements
    assert get_batch(b.id).counts["pending"] == BIG_BATCH
    for _ in range(2):
        worker_processes.start("--burst", "--concurrency", "8")
    wait_until(lambda: get_batch(b.id).finished, timeout=120, interval=0.5)
    wait_until(lambda: Execution.objects.filter(tag="done").exists(), timeout=30)
    worker_processes.stop_all()
    assert get_batch(b.id).counts == {
        "pending": 0, "completed": BIG_BATCH, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert Execution.objects.filter(tag="done").count() == 1
    assert Job.objects.filter(batch_id=b.id, status="completed").count() == BIG_BATCH


def test_the_admin_shows_batches_their_counts_callbacks_and_jobs_and_blocked_jobs(admin_client):
    with batch(on_success=noop.bind(), on_complete=collects.bind("done"), name="import 42") as b:
        first = add.enqueue(1, 2)
        add.using(after=first).enqueue(3, 4)  # blocked until first completed
    pages = "/admin/django_jobqueue/"
    listing = admin_client.get(f"{pages}jobbatch/").content.decode()
    assert "import 42" in listing and "waiting for its jobs" in listing
    detail = admin_client.get(f"{pages}jobbatch/{b.id}/change/").content.decode()
    assert "not enqueued yet" in detail
    link = f"{pages}job/?batch_id={b.id}"
    assert link in detail
    jobs = admin_client.get(link)
    assert jobs.status_code == 200
    assert first.id in jobs.content.decode()
    overview = admin_client.get(f"{pages}job/overview/")
    assert overview.status_code == 200 and "Blocked" in overview.content.decode()
    assert overview.context["overview"].total.counts["blocked"] == 1
    run_jobs()
    listing = admin_client.get(f"{pages}jobbatch/").content.decode()
    assert "enqueued" in listing
    detail = admin_client.get(f"{pages}jobbatch/{b.id}/change/").content.decode()
    assert "on_success</a>" in detail and "on_complete</a>" in detail and "Completed" in detail
    outsider = noop.enqueue()
    others = admin_client.get(link).content.decode()
    assert outsider.id not in others and first.id in others
