"""Workflows on real ``runjobworker`` subprocesses: kill -9 of a parent's worker, a parent
that dead-letters, a diamond, a thousand children, a chain."""

from __future__ import annotations

import signal

import pytest

from django_jobqueue import batch, chain, get_batch, get_job, group
from django_jobqueue.models import Job
from django_jobqueue.querysets.dependencies import CANCELLED_BY
from tests.conftest import wait_until
from tests.testapp.jobs import add, always_fails, collects, noop, sleep_then_record
from tests.testapp.models import Execution

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def _status(handle) -> str:
    return Job.objects.get(job_id=handle.id).status


def test_kill_9_of_a_parents_worker_runs_the_child_once_after_the_retry(worker_processes, tmp_path):
    marker = tmp_path / "started"
    parent = sleep_then_record.enqueue("parent", 30, str(marker))
    child = collects.using(after=parent).enqueue("child")
    victim = worker_processes.start()
    wait_until(marker.exists, timeout=20)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert (_status(parent), _status(child)) == ("running", "blocked")
    Job.objects.filter(job_id=parent.id).update(args=["parent", 0, ""])  # quick second run
    worker_processes.start()
    wait_until(lambda: _status(child) == "completed", timeout=60)
    row = Job.objects.get(job_id=parent.id)
    assert row.attempts == 2
    assert Execution.objects.filter(tag="child").count() == 1
    assert Execution.objects.get(tag="child").started >= row.finished_at
    assert get_job(child.id).result["parents"] == {parent.id: "parent"}


def test_a_parent_that_dead_letters_cancels_its_children_recursively(worker_processes):
    parent = always_fails.using(max_attempts=1).enqueue()
    children = [collects.using(after=parent).enqueue(f"child {i}") for i in range(3)]
    grandchild = collects.using(after=children).enqueue("grandchild")
    worker_processes.start()
    wait_until(lambda: _status(grandchild) == "cancelled", timeout=30)
    assert _status(parent) == "failed"
    for child in children:
        assert Job.objects.get(job_id=child.id).last_error == CANCELLED_BY.format(parent.id)
    assert not Execution.objects.exists()


def test_a_diamond_and_a_thousand_children_on_two_workers(worker_processes):
    a = noop.enqueue()
    b = collects.using(after=a).enqueue("b")
    c = collects.using(after=a).enqueue("c")
    d = collects.using(after=[b, c]).enqueue("d")
    fan = add.using(after=d).enqueue_many([(i, 1) for i in range(1000)])
    worker_processes.start()
    worker_processes.start()
    wait_until(lambda: not Job.objects.exclude(status="completed").exists(), timeout=120)
    started = dict(Execution.objects.values_list("tag", "started"))
    assert started["d"] >= max(started["b"], started["c"])
    assert Execution.objects.filter(tag="d").count() == 1
    assert get_job(fan[-1].id).result == 1000


def test_a_chain_runs_in_order_and_returns_the_last_result(worker_processes):
    worker_processes.start()
    value = chain(
        collects.bind("first"),
        group(collects.bind("left"), collects.bind("right")),
        collects.bind("last"),
    ).enqueue_and_wait(timeout=60)
    assert value["tag"] == "last"
    assert len(value["parents"]) == 2
    started = dict(Execution.objects.values_list("tag", "started"))
    assert started["first"] <= min(started["left"], started["right"])
    assert started["last"] >= max(started["left"], started["right"])


def test_a_batch_on_two_workers_fires_each_callback_exactly_once(worker_processes):
    worker_processes.start()
    worker_processes.start()
    with batch(on_success=collects.bind("success"), on_complete=collects.bind("complete")) as b:
        for i in range(100):
            add.enqueue(i, 1)
        add.enqueue_many([(i, 2) for i in range(200)])
    assert get_batch(b.id).wait(timeout=120).counts == {
        "pending": 0,
        "completed": 300,
        "failed": 0,
        "cancelled": 0,
    }
    wait_until(lambda: Execution.objects.count() == 2, timeout=60)
    assert sorted(Execution.objects.values_list("tag", flat=True)) == ["complete", "success"]
