"""Testing helpers for users' suites: run_jobs(), enqueued() and JOBQUEUE["EAGER"], in
TestCase-style (non-transactional) tests as well as transactional ones."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import transaction
from django.test import TestCase, override_settings

from django_jobqueue import (
    JobFailedError,
    JobHandle,
    JobQueueError,
    JobTimeoutError,
    get_job,
    signals,
)
from django_jobqueue.base import Status
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.testing import INLINE_WORKER, enqueued, run_jobs
from tests.testapp.jobs import (
    add,
    always_fails,
    async_add,
    call_partner,
    naps_limited,
    other_queue,
    progress_steps,
    record,
    retry_later,
)
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}


# -- run_jobs and enqueued ----------------------------------------------------------------------


def test_run_jobs_runs_what_is_queued_inside_the_tests_transaction():
    low = record.using(priority=-1).enqueue("low")
    high = record.using(priority=5).enqueue("high")
    elsewhere = other_queue.enqueue("x")
    assert run_jobs() == 3
    # In this thread and transaction: the jobs saw and wrote the test's rows.
    assert list(Execution.objects.order_by("id").values_list("tag", flat=True)) == ["high", "low"]
    for handle in (low, high, elsewhere):
        assert handle.refresh().status == "completed"
    assert high.result == "high" and Job.objects.get(job_id=high.id).worker == INLINE_WORKER
    assert run_jobs() == 0


def test_run_jobs_takes_a_queue():
    mine = other_queue.enqueue("mine")
    theirs = add.enqueue(1, 2)
    assert run_jobs(queue="other") == 1
    assert (mine.refresh().status, theirs.refresh().status) == ("completed", "queued")


def test_run_jobs_runs_async_jobs():
    handle = async_add.enqueue(2, 2)
    run_jobs()
    assert (handle.refresh().status, handle.result) == ("completed", 4)


def test_run_jobs_runs_one_attempt_of_a_failing_job_then_leaves_its_retry_queued():
    handle = always_fails.enqueue("nope")
    assert run_jobs() == 1
    handle.refresh()
    assert (handle.status, handle.attempts) == ("queued", 1)
    assert "RuntimeError: nope" in handle.error


def test_enqueued_lists_queued_jobs_with_their_arguments():
    first = add.enqueue(1, 2)
    add.using(queue="fast", priority=3).enqueue(x=3, y=4)
    record.enqueue("other job")
    listed = enqueued(name="tests.testapp.jobs.add")
    assert [(job.args, job.kwargs, job.queue, job.priority) for job in listed] == [
        ([1, 2], {}, "default", 0),
        ([], {"x": 3, "y": 4}, "fast", 3),
    ]
    assert listed[0].id == first.id and listed[0].handle().status == "queued"
    assert [job.name for job in enqueued(queue="fast")] == ["tests.testapp.jobs.add"]
    assert len(enqueued()) == 3
    run_jobs()
    assert enqueued() == []


# -- JOBQUEUE["EAGER"] ---------------------------------------------------------------------------


def test_without_eager_enqueue_has_no_receiver_and_runs_nothing():
    assert not signals.job_enqueued.has_listeners()
    handle = add.enqueue(1, 2)
    assert handle.status == "queued" and handle.refresh().status == "queued"


def test_eager_runs_the_job_at_once_in_a_testcase_transaction(eager):
    handle = record.enqueue("eager")
    assert (handle.status, handle.result, handle.attempts) == ("completed", "eager", 1)
    assert Execution.objects.filter(tag="eager").count() == 1


def test_eager_enqueue_and_wait_works_in_a_testcase_transaction(eager):
    assert add.enqueue_and_wait(20, 22) == 42


@pytest.mark.django_db(transaction=True)  # the async path writes from another thread
async def test_eager_aenqueue_and_wait(eager):
    assert await add.aenqueue_and_wait(1, 1) == 2


def test_eager_runs_every_attempt_at_once_then_dead_letters(eager):
    with pytest.raises(JobFailedError, match="RuntimeError: eager failure"):
        always_fails.enqueue_and_wait("eager failure")
    (letter,) = DeadLetter.objects.all()
    assert letter.attempts == 3


def test_eager_still_refuses_to_wait_inside_the_callers_own_transaction(eager):
    with (
        pytest.raises(JobQueueError, match=r"cannot run inside transaction\.atomic"),
        transaction.atomic(),
    ):
        add.enqueue_and_wait(1, 2)


@pytest.mark.django_db(transaction=True)
def test_eager_waits_for_the_commit_and_a_rollback_runs_nothing(eager):
    with transaction.atomic():
        handle = record.enqueue("after commit")
        assert not Execution.objects.exists()
        assert handle.status == "queued"
    assert Execution.objects.filter(tag="after commit").count() == 1
    assert handle.status == "completed"  # refreshed by the run
    with transaction.atomic():
        rolled_back = record.enqueue("never")
        transaction.set_rollback(True)
    assert get_job(rolled_back.id) is None
    assert not Execution.objects.filter(tag="never").exists()


def test_eager_in_an_atomic_block_of_a_testcase_runs_with_captured_callbacks(
    eager, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            handle = record.enqueue("captured")
        assert handle.status == "queued"
    assert handle.status == "completed"


def test_eager_follows_override_settings():
    with override_settings(JOBQUEUE={"EAGER": True}):
        assert signals.job_enqueued.has_listeners()
        assert add.enqueue(1, 1).status == "completed"
    assert not signals.job_enqueued.has_listeners()
    assert add.enqueue(1, 1).status == "queued"


class EagerInATestCase(TestCase):
    """The docs' TestCase example, as a test."""

    @override_settings(JOBQUEUE={"EAGER": True})
    def test_enqueue_and_wait(self):
        self.assertEqual(add.enqueue_and_wait(2, 3), 5)

    def test_run_jobs(self):
        record.enqueue("in a TestCase")
        self.assertEqual(run_jobs(), 1)
        self.assertTrue(Execution.objects.filter(tag="in a TestCase").exists())


# -- the worker's attempt, run here: retry rules, Retry(after=...), progress, time limit ----------


def _ran_inline(eager: bool, enqueue: Callable[[], JobHandle]) -> tuple[JobHandle, Job]:
    """Enqueue with ``enqueue()`` and run the job the inline way asked (EAGER, or
    run_jobs()); its handle (EAGER's as enqueue returned it) and its row afterwards."""
    if eager:
        with override_settings(JOBQUEUE={"EAGER": True}):
            handle = enqueue()
    else:
        handle = enqueue()
        run_jobs()
        handle.refresh()
    return handle, Job.objects.get(job_id=handle.id)


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "run_jobs"])
def test_an_error_outside_retry_on_fails_after_one_attempt_as_on_a_worker(eager):
    handle, row = _ran_inline(eager, lambda: call_partner.enqueue("value"))
    assert (handle.status, handle.attempts) == (Status.FAILED, 1)
    letter = DeadLetter.objects.get(job_id=row.job_id)
    assert letter.attempts == 1
    assert "not retried: ValueError is not in retry_on" in letter.error
    assert Execution.objects.filter(tag="partner-value").count() == 1


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "run_jobs"])
def test_retry_after_requeues_with_its_delay_and_the_attempt_counted(eager):
    handle, row = _ran_inline(eager, lambda: retry_later.enqueue(30, "partner busy"))
    assert (handle.status, handle.attempts) == (Status.QUEUED, 1)
    assert row.last_error == "Retry: partner busy"
    assert row.run_after - row.started_at >= timedelta(seconds=29)
    assert Execution.objects.filter(tag__startswith="retry-later").count() == 1


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "run_jobs"])
def test_progress_lands_as_a_worker_stores_it(eager):
    handle, _ = _ran_inline(eager, lambda: progress_steps.enqueue(""))
    assert handle.status == Status.COMPLETED
    assert handle.progress is not None
    assert (handle.progress["current"], handle.progress["message"]) == (3, "done")


def test_a_run_longer_than_its_time_limit_fails_once_it_returns():
    handle = naps_limited.enqueue("slow", 0.5)  # time_limit=0.3, max_attempts=1
    assert run_jobs() == 1
    handle.refresh()
    assert (handle.status, handle.attempts) == (Status.FAILED, 1)
    assert "ran longer than its time_limit of 0.3s" in handle.error


def test_a_non_bool_eager_is_a_check_error(settings):
    from django.core import checks

    settings.JOBQUEUE = {"EAGER": "yes"}
    errors = [e for e in checks.run_checks() if e.id == "django_jobqueue.E004"]
    assert [e.msg for e in errors] == [
        "JOBQUEUE['EAGER'] is 'yes' (a str); it must be True or False."
    ]


@pytest.mark.django_db(transaction=True)  # the async wait writes from another thread
@pytest.mark.parametrize("wait", ["sync", "async"])
def test_eager_enqueue_and_wait_of_a_job_deferred_by_retry_after_raises_at_once(settings, wait):
    """``Retry(after=...)`` leaves the job queued and EAGER runs no deferred job: the wait
    could only time out, so it says so at once (not JobTimeoutError after WAIT_TIMEOUT)."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True, "WAIT_TIMEOUT": 2}
    call = retry_later.enqueue_and_wait
    if wait == "async":
        call = async_to_sync(retry_later.aenqueue_and_wait)
    with pytest.raises(JobQueueError, match=r"deferred by Retry\(after=\.\.\.\)") as raised:
        call(3600, "partner busy")
    assert not isinstance(raised.value, JobTimeoutError)
    row = Job.objects.get()
    assert (row.status, row.attempts) == (Status.QUEUED, 1)  # left as it was, for run_jobs()
