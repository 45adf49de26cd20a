"""Workflows, in one process: dependencies (``using(after=...)``), the "blocked" status, the
failure policy, requeue, pruning; children released in the transaction of their parent's
ending. Real worker processes: ``tests/test_workflows_process.py``."""

from __future__ import annotations

from datetime import timedelta

import django
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import (
    InvalidJobError,
    JobQueueError,
    batch,
    chain,
    get_batch,
    get_job,
    group,
)
from django_jobqueue.backend import STATUSES
from django_jobqueue.control import cancel_queued
from django_jobqueue.deadletters import requeue
from django_jobqueue.exceptions import SerializationError
from django_jobqueue.models import DeadLetter, Job, JobDependency
from django_jobqueue.querysets.dependencies import CANCELLED_BY
from django_jobqueue.testing import run_jobs
from django_jobqueue.worker.inline import run_now
from tests.testapp.jobs import add, always_fails, async_collects, collects, noop
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def _status(handle_or_id) -> str:
    job_id = getattr(handle_or_id, "id", handle_or_id)
    return Job.objects.get(job_id=job_id).status


def test_a_child_is_blocked_until_its_parent_completed_and_sees_its_result():
    parent = add.enqueue(1, 2)
    child = collects.using(after=parent).enqueue("child")
    assert child.status == "blocked"
    assert get_job(child.id).status == "blocked"
    assert STATUSES["blocked"] == STATUSES["queued"]  # READY to django.tasks
    assert run_now(child.id) == 0  # not claimable while blocked
    assert run_now(parent.id) == 1
    assert _status(child) == "queued"
    run_jobs()
    assert get_job(child.id).result == {"tag": "child", "parents": {parent.id: 3}}


def test_after_takes_ids_and_lists_and_waits_for_every_parent():
    first, second = add.enqueue(1, 1), add.enqueue(2, 2)
    child = collects.using(after=[first.id, second]).enqueue("both")
    assert Job.objects.get(job_id=child.id).waiting_for == 2
    run_now(first.id)
    assert _status(child) == "blocked"
    run_now(second.id)
    assert _status(child) == "queued"
    run_jobs()
    assert get_job(child.id).result["parents"] == {first.id: 2, second.id: 4}


def test_an_async_job_reads_its_parent_results():
    parent = add.enqueue(20, 22)
    child = async_collects.using(after=parent).enqueue("async")
    run_jobs()
    assert get_job(child.id).result == {"tag": "async", "parents": {parent.id: 42}}


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ("no-such-job", "do not exist: 'no-such-job'"),
        (42, "not int: 42"),
        ([{"id": 1}], "not dict"),
        ([[]], "not list"),
    ],
)
def test_bad_after_is_refused_at_the_call_site_and_writes_nothing(after, message):
    parent = add.enqueue(1, 2)
    before = Job.objects.count()
    with pytest.raises(InvalidJobError, match=message):
        add.using(after=[parent, after] if after == "no-such-job" else after).enqueue(1, 2)
    assert Job.objects.count() == before
    assert not JobDependency.objects.exists()
    assert not Job.objects.get(job_id=parent.id).has_children  # rolled back


def test_a_bad_parent_failure_is_refused():
    with pytest.raises(InvalidJobError, match="parent_failure must be 'cancel'"):
        add.using(parent_failure="ignore")


def test_a_missing_parent_inside_the_callers_transaction_rolls_back_only_this_call():
    with transaction.atomic():
        kept = add.enqueue(1, 2)
        with pytest.raises(InvalidJobError):
            add.using(after="missing").enqueue(1, 2)
    assert list(Job.objects.values_list("job_id", flat=True)) == [kept.id]


def test_parents_already_finished_apply_at_enqueue():
    done = add.enqueue(1, 2)
    run_now(done.id)
    failed = always_fails.using(max_attempts=1).enqueue()
    run_now(failed.id)
    assert _status(failed) == "failed"
    assert collects.using(after=done).enqueue("ready").status == "queued"
    cancelled = collects.using(after=[done, failed]).enqueue("cancelled")
    assert cancelled.status == "cancelled"
    assert Job.objects.get(job_id=cancelled.id).last_error == CANCELLED_BY.format(failed.id)
    runs = collects.using(after=[done, failed], parent_failure="run").enqueue("runs")
    assert runs.status == "queued"
    run_jobs()
    assert get_job(runs.id).result["parents"] == {done.id: 3}


def test_a_dead_lettered_parent_cancels_its_children_recursively_and_requeue_revives_them():
    parent = always_fails.using(max_attempts=1).enqueue()
    child = collects.using(after=parent).enqueue("child")
    grandchild = collects.using(after=child).enqueue("grandchild")
    runner = collects.using(after=parent, parent_failure="run").enqueue("runner")
    after_runner = collects.using(after=runner).enqueue("after runner")
    run_now(parent.id)
    assert _status(parent) == "failed"
    for handle, name in ((child, parent.id), (grandchild, child.id)):
        row = Job.objects.get(job_id=handle.id)
        assert (row.status, row.last_error) == ("cancelled", CANCELLED_BY.format(name))
    assert _status(runner) == "queued"
    assert _status(after_runner) == "blocked"

    assert requeue(DeadLetter.objects.all()) == 1
    assert Job.objects.get(job_id=parent.id).has_children
    assert _status(child) == "blocked"
    assert _status(grandchild) == "blocked"
    # The requeued parent now succeeds: its children run, in order.
    Job.objects.filter(job_id=parent.id).update(name=noop.name, args=[], kwargs={})
    run_jobs()
    assert {_status(h) for h in (parent, child, grandchild, runner, after_runner)} == {"completed"}


def test_cancelling_a_blocked_job_cancels_its_children():
    parent = add.enqueue(1, 2)
    child = collects.using(after=parent).enqueue("child")
    grandchild = collects.using(after=child).enqueue("grandchild")
    assert child.cancel()
    assert _status(child) == "cancelled"
    assert _status(grandchild) == "cancelled"
    run_jobs()
    assert _status(parent) == "completed"
    assert not Execution.objects.exists()


def test_a_diamond_runs_its_join_once_after_both_branches():
    a = add.enqueue(1, 1)
    b = collects.using(after=a).enqueue("b")
    c = collects.using(after=a).enqueue("c")
    d = collects.using(after=[b, c]).enqueue("d")
    run_jobs()
    assert list(Execution.objects.order_by("id").values_list("tag", flat=True))[-1] == "d"
    assert Execution.objects.filter(tag="d").count() == 1
    assert sorted(get_job(d.id).result["parents"]) == sorted([b.id, c.id])


def test_a_thousand_children_are_released_by_one_ending_in_a_few_statements():
    parent = noop.enqueue()
    add.using(after=parent).enqueue_many([(i, i) for i in range(1000)])
    assert Job.objects.filter(status="blocked").count() == 1000
    with CaptureQueriesContext(connection) as queries:
        assert run_now(parent.id) == 1
    assert Job.objects.filter(status="queued").count() == 1000
    assert len(queries) < 12, [q["sql"] for q in queries.captured_queries]


def test_a_plain_completion_is_one_statement_and_a_parents_is_recorded_with_its_children():
    plain, parent = noop.enqueue(), noop.enqueue()
    child = add.using(after=parent).enqueue(1, 2)
    for handle, expected in ((plain, 1), (parent, 2)):
        with CaptureQueriesContext(connection) as queries:
            run_now(handle.id)
        sqls = [q["sql"] for q in queries.captured_queries]
        completions = [s for s in sqls if s.startswith("UPDATE") and "finished_at = " in s]
        released = [s for s in sqls if "waiting_for = " in s]
        assert len(completions) == expected, completions
        assert len(released) == expected - 1, released
    assert _status(child) == "queued"


def test_a_parent_is_not_pruned_before_its_children_finished():
    parent = add.using(result_ttl=0).enqueue(1, 2)
    child = collects.using(after=parent, result_ttl=0).enqueue("child")
    run_now(parent.id)
    later = timezone.now() + timedelta(seconds=5)
    assert Job.objects.prune(later) == 0
    assert Job.objects.filter(job_id=parent.id).exists()
    run_jobs()
    assert get_job(child.id).result["parents"] == {parent.id: 3}
    assert Job.objects.prune(later) == 2
    assert not JobDependency.objects.exists()


def test_dedup_of_a_child_id_keeps_the_existing_job_and_its_parents():
    parent = add.enqueue(1, 2)
    first = add.using(job_id="child-1", after=parent).enqueue(1, 2)
    again = add.using(job_id="child-1", after=parent).enqueue(1, 2)
    assert (first.created, again.created) == (True, False)
    assert again.status == "blocked"
    assert JobDependency.objects.count() == 1


# -- chains and groups ---------------------------------------------------------------------


def test_bind_checks_the_arguments_and_enqueues_nothing():
    with pytest.raises(InvalidJobError, match="cannot take these arguments"):
        add.bind(1)
    with pytest.raises(SerializationError):
        add.bind(1, {1, 2})
    bound = add.bind(1, 2).using(queue="other", priority=3)
    assert (bound.job.queue, bound.job.priority, bound.args) == ("other", 3, (1, 2))
    assert not Job.objects.exists()


def test_a_chain_runs_each_job_after_the_one_before():
    handles = chain(collects.bind("one"), collects.bind("two"), collects.bind("three")).enqueue()
    assert [h.status for h in handles] == ["queued", "blocked", "blocked"]
    run_jobs()
    tags = list(Execution.objects.order_by("id").values_list("tag", flat=True))
    assert tags == ["one", "two", "three"]
    second = get_job(handles[1].id).result
    assert get_job(handles[2].id).result["parents"] == {handles[1].id: second}


def test_a_chain_of_a_group_runs_the_next_job_after_every_member():
    handles = chain(group(add.bind(1, 1), add.bind(2, 2)), collects.bind("merge")).enqueue()
    assert len(handles) == 3
    run_jobs()
    assert get_job(handles[2].id).result["parents"] == {handles[0].id: 2, handles[1].id: 4}


def test_a_chain_is_written_all_or_none():
    with pytest.raises(InvalidJobError, match="do not exist"):
        chain(add.bind(1, 2), add.bind(3, 4).using(after="missing")).enqueue()
    assert not Job.objects.exists()
    with pytest.raises(RuntimeError), transaction.atomic():
        chain(add.bind(1, 2), add.bind(3, 4)).enqueue()
        raise RuntimeError("roll back")
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("items", "message"),
    [((), "needs at least one job"), ((add,), r"call \.bind"), ((42,), "not int")],
)
def test_chain_and_group_refuse_what_is_not_a_bound_job(items, message):
    for compose in (chain, group):
        with pytest.raises(InvalidJobError, match=message):
            compose(*items)


def test_a_chain_refuses_to_wait_inside_a_transaction():
    with transaction.atomic(), pytest.raises(JobQueueError, match="inside"):
        chain(add.bind(1, 2)).enqueue_and_wait(timeout=1)
    assert not Job.objects.exists()


async def test_the_async_twins_enqueue_a_group():
    handles = await group(add.bind(1, 2), add.bind(3, 4)).aenqueue()
    assert [h.status for h in handles] == ["queued", "queued"]


def test_eager_runs_a_chain_in_order(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}
    handles = chain(
        collects.bind("one"), group(collects.bind("two")), collects.bind("three")
    ).enqueue()
    assert [h.status for h in handles] == ["completed"] * 3
    tags = list(Execution.objects.order_by("id").values_list("tag", flat=True))
    assert tags == ["one", "two", "three"]


# -- batches -------------------------------------------------------------------------------


def _callbacks() -> list[str]:
    return sorted(Job.objects.filter(job_id__startswith="batch:").values_list("job_id", flat=True))


def test_a_batch_counts_its_jobs_and_enqueues_its_callbacks_once():
    with batch(
        on_success=collects.bind("success"), on_complete=collects.bind("complete"), name="two"
    ) as b:
        add.enqueue(1, 2)
        add.enqueue_many([(3, 4), (5, 6)])
    counts = get_batch(b.id).counts
    assert counts == {"pending": 3, "completed": 0, "failed": 0, "cancelled": 0}
    assert Job.objects.filter(batch_id=b.id).count() == 3
    run_jobs()
    handle = get_batch(b.id)
    assert (handle.name, handle.finished) == ("two", True)
    assert handle.counts == {"pending": 0, "completed": 3, "failed": 0, "cancelled": 0}
    assert _callbacks() == [f"batch:{b.id}:on_complete", f"batch:{b.id}:on_success"]
    assert sorted(Execution.objects.values_list("tag", flat=True)) == ["complete", "success"]
    assert handle.wait(timeout=1) is not None


def test_a_batch_with_a_failure_runs_on_complete_only_and_counts_cancelled_children():
    with batch(on_success=noop.bind(), on_complete=noop.bind()) as b:
        parent = always_fails.using(max_attempts=1).enqueue()
        collects.using(after=parent).enqueue("never")
        add.enqueue(1, 1)
    run_jobs()
    assert get_batch(b.id).counts == {"pending": 0, "completed": 1, "failed": 1, "cancelled": 1}
    assert _callbacks() == [f"batch:{b.id}:on_complete"]


def test_a_batch_whose_jobs_finished_before_it_was_sealed_fires_at_the_seal(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}
    with batch(on_complete=collects.bind("done")) as b:
        add.enqueue(1, 2)
        assert _callbacks() == []  # not sealed: more jobs may join
    assert get_batch(b.id).finished
    assert list(Execution.objects.values_list("tag", flat=True)) == ["done"]


def test_an_empty_batch_finishes_at_once_and_a_batch_rolled_back_leaves_nothing():
    with batch(on_complete=noop.bind()) as b:
        pass
    assert get_batch(b.id).finished and _callbacks() == [f"batch:{b.id}:on_complete"]
    with pytest.raises(RuntimeError), transaction.atomic():
        with batch(on_complete=noop.bind()) as rolled_back:
            add.enqueue(1, 2)
        raise RuntimeError("roll back")
    assert get_batch(rolled_back.id) is None
    assert not Job.objects.filter(batch_id=rolled_back.id).exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_success": noop}, r"call \.bind"),
        ({"on_complete": "x"}, "takes a bound job"),
        ({"name": 42}, "name"),
    ],
)
def test_bad_batch_arguments_are_refused(options, message):
    with pytest.raises(InvalidJobError, match=message):
        batch(**options)


def test_a_batch_inside_a_batch_is_refused():
    with batch(), pytest.raises(InvalidJobError, match="nesting"), batch():
        pass


def test_a_batch_job_that_dead_letters_is_counted_once_even_when_requeued():
    with batch(on_complete=noop.bind()) as b:
        always_fails.using(max_attempts=1).enqueue()
    run_jobs()
    assert requeue(DeadLetter.objects.all()) == 1
    run_jobs()
    assert get_batch(b.id).counts["failed"] == 1
    assert _callbacks() == [f"batch:{b.id}:on_complete"]


def test_cancelling_a_queue_cancels_the_children_of_its_jobs_and_counts_them_in_their_batch():
    with batch(on_complete=noop.bind()) as b:
        parent = add.using(queue="other").enqueue(1, 2)
    child = collects.using(after=parent).enqueue("child")
    assert cancel_queued("other") == 1
    assert _status(child) == "cancelled"
    assert get_batch(b.id).counts["cancelled"] == 1
    assert _callbacks() == [f"batch:{b.id}:on_complete"]


def test_children_are_released_in_the_transaction_that_records_the_ending():
    parent = noop.enqueue()
    child = add.using(after=parent).enqueue(1, 2)
    now = timezone.now()
    claimed = Job.objects.claim_job(
        parent.id, worker="t", now=now, lease_until=now + timedelta(seconds=60)
    )
    with pytest.raises(RuntimeError), transaction.atomic():
        Job.objects.complete([claimed.fence], now=now, expires_at=now)
        assert _status(child) == "queued"
        raise RuntimeError("the ending's transaction rolls back")
    assert (_status(parent), _status(child)) == ("running", "blocked")
    Job.objects.complete([claimed.fence], now=now, expires_at=now)
    assert (_status(parent), _status(child)) == ("completed", "queued")


def test_a_task_result_works_in_after_and_a_blocked_task_reads_ready():
    if django.VERSION < (6, 0):
        pytest.importorskip("django_tasks", reason="needs the django-tasks backport on Django 5.2")
    from tests.testapp.tasks import add_task

    parent = add_task.enqueue(1, 2)
    child = collects.using(after=parent).enqueue("after a task")
    assert child.status == "blocked"
    # A task's row that waits for a parent is, to the framework, READY.
    task_child = add_task.enqueue(3, 4)
    Job.objects.filter(job_id=task_child.id).update(status="blocked")
    task_child.refresh()
    assert task_child.status == add_task.enqueue(0, 0).status  # READY, as a queued task
    run_jobs()
    assert get_job(child.id).result["parents"] == {parent.id: 3}


def test_the_admin_job_page_links_parents_and_children_with_their_status(admin_client):
    parent = add.enqueue(1, 2)
    child = collects.using(after=parent).enqueue("child")
    pages = {}
    for handle in (parent, child):
        pk = Job.objects.get(job_id=handle.id).pk
        response = admin_client.get(f"/admin/django_jobqueue/job/{pk}/change/")
        assert response.status_code == 200
        pages[handle.id] = response.content.decode()
    assert child.id in pages[parent.id] and "blocked" in pages[parent.id]
    assert parent.id in pages[child.id] and "Runs after" in pages[child.id]
