"""The worker's controls, producer side: options, cancelling, JobContext, Retry, limits."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from django_jobqueue import (
    InvalidJobError,
    JobCancelledError,
    JobContext,
    Retry,
    cancel,
    get_job,
    job,
)
from django_jobqueue.models import Job
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db

LIMITS = {"partner-api": {"concurrency": 4, "rate": "100/m"}, "tenant:*": {"concurrency": 2}}


# -- options ---------------------------------------------------------------------------------


def test_time_limit_and_limit_are_stored_on_the_job(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "LIMITS": LIMITS, "TIME_LIMIT": 30}
    default = add.enqueue(1, 2)
    chosen = add.using(time_limit=2.5, limit="tenant:42").enqueue(1, 2)
    unlimited = add.using(time_limit=None).enqueue(1, 2)
    rows = {row.job_id: row for row in Job.objects.all()}
    assert (rows[default.id].time_limit, rows[default.id].limit_key) == (30.0, None)
    assert (rows[chosen.id].time_limit, rows[chosen.id].limit_key) == (2.5, "tenant:42")
    assert rows[unlimited.id].time_limit is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time_limit": 0}, "time_limit must be a positive number"),
        ({"time_limit": float("nan")}, "time_limit must be a positive number"),
        ({"time_limit": True}, "time_limit must be a positive number"),
        ({"time_limit": 8 * 86400}, "up to 604800"),
        ({"limit": "unknown"}, "has no entry in JOBQUEUE['LIMITS']"),
        ({"limit": ""}, "1 to 200 printable"),
        ({"limit": 3}, "1 to 200 printable"),
        ({"time_limt": 3}, "did you mean 'time_limit'"),
    ],
)
def test_bad_control_options_are_refused_and_write_nothing(settings, options, message):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "LIMITS": LIMITS}
    with pytest.raises(InvalidJobError, match=None) as info:
        add.using(**options).enqueue(1, 2)
    assert message in str(info.value)
    assert not Job.objects.exists()


def test_a_malformed_limits_setting_is_named_at_the_call_site(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "LIMITS": {"api": {"rate": "lots"}}}
    with pytest.raises(InvalidJobError, match="'lots' is not of the form"):
        add.using(limit="api").enqueue(1, 2)


@pytest.mark.parametrize(
    ("decorator_options", "message"),
    [
        ({"retry_on": "ValueError"}, "retry_on takes an exception class"),
        ({"retry_on": (ValueError, int)}, "retry_on takes an exception class"),
        ({"takes_context": "yes"}, "takes_context must be True or False"),
        ({"time_limit": -1}, "time_limit must be a positive number"),
    ],
)
def test_bad_decorator_options_are_refused(decorator_options, message):
    with pytest.raises(InvalidJobError) as info:
        job(name="tests.bad_options", **decorator_options)(lambda x: x)
    assert message in str(info.value)


def test_takes_context_needs_a_parameter_for_the_context():
    def no_params():
        return None

    with pytest.raises(InvalidJobError, match="no positional parameter for it"):
        job(name="tests.no_params", takes_context=True)(no_params)


def test_takes_context_signature_check_skips_the_context():
    @job(name="tests.with_context", takes_context=True)
    def with_context(ctx, account_id):
        return ctx, account_id

    with_context.enqueue(7)
    with pytest.raises(InvalidJobError, match="too many positional arguments"):
        with_context.enqueue(7, 8)
    context, account = with_context(7)  # a plain call gets an inline context
    assert isinstance(context, JobContext)
    assert (context.worker, context.attempt, account) == ("inline", 1, 7)


def test_retry_on_decides_which_errors_retry():
    @job(name="tests.retry_on", retry_on=(ConnectionError, TimeoutError))
    def partner():
        return None

    everything = job(name="tests.retry_all")(lambda: None)
    assert partner.retries(ConnectionRefusedError()) and partner.retries(TimeoutError())
    assert not partner.retries(ValueError())
    assert everything.retries(ValueError()) and not everything.retries(KeyboardInterrupt())


# -- JobContext and Retry ------------------------------------------------------------------------


def _context(**kwargs):
    reported = []
    defaults = {"job_id": "j", "attempt": 2, "max_attempts": 3, "queue": "q", "worker": "w"}
    context = JobContext(**{**defaults, **kwargs}, report=reported.append)
    return context, reported


def test_context_facts_are_read_only_and_progress_is_reported():
    context, reported = _context()
    assert (context.job_id, context.attempt, context.max_attempts) == ("j", 2, 3)
    assert (context.queue, context.worker, context.is_last_attempt) == ("q", "w", False)
    with pytest.raises(AttributeError):
        context.attempt = 5
    context.set_progress(40, total=100, message="rendering\npage 2")
    assert reported == [context.progress]
    assert reported[0]["current"] == 40 and reported[0]["total"] == 100
    assert reported[0]["message"] == "rendering page 2"  # no control characters in a message


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((float("nan"),), {}),
        (("40",), {}),
        ((1,), {"total": 0}),
        ((1,), {"total": float("inf")}),
        ((1,), {"message": 5}),
    ],
)
def test_bad_progress_is_refused(args, kwargs):
    context, reported = _context()
    with pytest.raises(InvalidJobError):
        context.set_progress(*args, **kwargs)
    assert reported == []


def test_cancel_requested_follows_the_workers_flag():
    flag = threading.Event()
    context, _ = _context(cancelled=flag)
    assert not context.cancel_requested
    flag.set()
    assert context.cancel_requested


@pytest.mark.parametrize(
    ("after", "seconds"), [(None, None), (30, 30.0), (timedelta(minutes=2), 120.0), (0, 0.0)]
)
def test_retry_takes_seconds_or_a_timedelta(after, seconds):
    assert Retry(after=after).after == seconds


@pytest.mark.parametrize("after", [-1, float("nan"), float("inf"), "soon", True, 10**9])
def test_retry_refuses_what_is_not_a_delay(after):
    with pytest.raises((TypeError, ValueError)):
        Retry(after=after)


# -- cancelling ----------------------------------------------------------------------------------


def test_cancel_a_queued_job_at_once():
    handle = add.enqueue(1, 2)
    assert handle.cancel() is True
    assert handle.status == "cancelled" and handle.finished
    row = Job.objects.get(job_id=handle.id)
    assert row.finished_at is not None and row.expires_at > row.finished_at
    assert cancel(handle.id) is False  # finished: left unchanged
    with pytest.raises(JobCancelledError) as info:
        handle.wait(timeout=1)
    assert info.value.job_id == handle.id


def test_cancel_a_running_job_asks_it_to_stop():
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(status="running", worker="w1", attempts=1)
    assert cancel(handle.id) is True
    row = Job.objects.get(job_id=handle.id)
    assert (row.status, row.cancel_requested) == ("running", True)


def test_cancel_a_finished_or_missing_job_changes_nothing():
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(status="completed")
    assert cancel(handle.id) is False
    assert Job.objects.get(job_id=handle.id).status == "completed"
    assert cancel("no-such-job") is False
    assert cancel(None) is False


def test_a_cancelled_job_within_its_ttl_is_like_a_failed_one_for_dedup():
    first = add.using(job_id="cancel-dedup").enqueue(1, 2)
    first.cancel()
    again = add.using(job_id="cancel-dedup").enqueue(1, 2)
    assert (again.created, again.status) == (False, "cancelled")
    Job.objects.filter(job_id="cancel-dedup").update(expires_at="2000-01-01T00:00:00Z")
    fresh = add.using(job_id="cancel-dedup").enqueue(1, 2)
    assert (fresh.created, fresh.status) == (True, "queued")
    assert get_job("cancel-dedup").status == "queued"


async def test_acancel(transactional_db):
    handle = await add.aenqueue(1, 2)
    assert await handle.acancel() is True
    assert handle.status == "cancelled"
