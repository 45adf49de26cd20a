"""Producing jobs: @job, enqueue, using(), enqueue_many, bad input, transactions."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import (
    InvalidJobError,
    JobHandle,
    JobQueueError,
    SerializationError,
    get_job,
    job,
)
from django_jobqueue.models import Job
from django_jobqueue.registry import registry
from tests.conftest import requires_postgres
from tests.testapp.jobs import add, async_add, echo, noop, other_queue

pytestmark = pytest.mark.django_db


def test_job_is_registered_under_module_and_name():
    assert add.name == "tests.testapp.jobs.add"
    assert registry.get("tests.testapp.jobs.add") is add
    assert other_queue.queue == "other"


def test_plain_call_runs_inline_without_a_row():
    assert add(2, 3) == 5
    assert not Job.objects.exists()


def test_enqueue_writes_one_queued_row():
    handle = add.enqueue(1, y=2)
    assert isinstance(handle, JobHandle)
    assert handle.status == "queued" and handle.created
    row = Job.objects.get(job_id=handle.id)
    assert (row.name, row.queue, row.args, row.kwargs) == (
        "tests.testapp.jobs.add",
        "default",
        [1],
        {"y": 2},
    )
    assert (row.max_attempts, row.result_ttl, row.priority, row.attempts) == (3, 3600, 0, 0)
    assert row.run_after is None and row.group is None


def test_settings_defaults_are_read_at_enqueue_time(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DEFAULT_QUEUE": "late", "MAX_ATTEMPTS": 7}
    row = Job.objects.get(job_id=add.enqueue(1, 1).id)
    assert (row.queue, row.max_attempts) == ("late", 7)


def test_using_sets_every_option():
    before = timezone.now()
    handle = add.using(
        job_id="add-1-2",
        queue="fast",
        priority=10,
        run_after=timedelta(seconds=30),
        group="user:42",
        max_attempts=2,
        result_ttl=600,
    ).enqueue(1, 2)
    row = Job.objects.get(job_id="add-1-2")
    assert handle.id == "add-1-2"
    assert (row.queue, row.priority, row.group, row.max_attempts, row.result_ttl) == (
        "fast",
        10,
        "user:42",
        2,
        600,
    )
    assert before + timedelta(seconds=29) < row.run_after < timezone.now() + timedelta(seconds=31)


def test_using_returns_a_copy():
    fast = add.using(queue="fast")
    assert fast.queue == "fast" and add.queue is None


def test_tuples_arrive_as_lists():
    handle = add.enqueue((1, 2), {"k": (3,)})
    assert Job.objects.get(job_id=handle.id).args == [[1, 2], {"k": [3]}]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (datetime(2024, 1, 1), "isoformat"),
        (date(2024, 1, 1), "isoformat"),
        (Decimal("1.5"), "Decimal"),
        ({1, 2}, "sorted"),
        (b"x", "b64encode"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        ("a\x00b", "NUL"),
        ({1: "int key"}, "keys must be str"),
        (object(), "not JSON-serializable"),
    ],
)
def test_unserializable_arguments_are_refused_and_nothing_is_written(value, fragment):
    with pytest.raises(SerializationError, match=fragment) as info:
        add.enqueue(1, {"nested": [value]})
    assert info.value.path.startswith("args[1]['nested'][0]")
    assert isinstance(info.value, TypeError)
    assert not Job.objects.exists()


def test_unknown_using_option_lists_the_valid_ones():
    with pytest.raises(InvalidJobError) as info:
        add.using(queu="x")
    message = str(info.value)
    assert "'queu' (did you mean 'queue'?)" in message
    for option in (
        "job_id",
        "queue",
        "priority",
        "run_after",
        "group",
        "max_attempts",
        "result_ttl",
        "timeout",
    ):
        assert option in message


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"job_id": ""}, "1 to 255"),
        ({"job_id": "x" * 256}, "1 to 255"),
        ({"job_id": 12}, "must be a str"),
        ({"job_id": "a\nb"}, "control character"),
        ({"job_id": " padded"}, "whitespace"),
        ({"queue": 5}, "queue must be a str"),
        ({"queue": "has space"}, "not a valid queue name"),
        ({"priority": "high"}, "priority must be an int"),
        ({"priority": True}, "priority must be an int"),
        ({"priority": 2**40}, "between"),
        ({"max_attempts": 0}, "at least 1"),
        ({"result_ttl": -1}, "at least 0"),
        ({"run_after": 30}, "timedelta or a datetime"),
        ({"run_after": datetime(2030, 1, 1)}, "naive"),
        ({"group": ""}, "1 to 200"),
        ({"timeout": 0}, "positive"),
        ({"timeout": math.nan}, "positive"),
    ],
)
def test_bad_options_raise_and_write_nothing(options, fragment):
    with pytest.raises(InvalidJobError, match=fragment):
        add.using(**options).enqueue(1, 2)
    assert not Job.objects.exists()


def test_any_printable_job_id_works():
    job_id = "ünïcode/with spaces:and#symbols!" + "x" * 200
    handle = add.using(job_id=job_id).enqueue(1, 2)
    assert get_job(job_id).id == handle.id == job_id


def test_decorator_refuses_nested_functions_and_bad_options():
    with pytest.raises(InvalidJobError, match="module-level"):

        @job
        def nested():
            pass

    with pytest.raises(InvalidJobError, match="queue"):
        job(queue="bad queue")(noop.func)
    with pytest.raises(InvalidJobError, match="max_attempts"):
        job(max_attempts=0)(noop.func)


def test_get_job_returns_none_for_unknown_ids():
    assert get_job("nope") is None


def test_handle_refresh_reads_the_database():
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(status="running", attempts=1)
    assert handle.status == "queued"
    assert handle.refresh().status == "running" and handle.attempts == 1


def test_rollback_leaves_no_job():
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue(1, 2)
        assert Job.objects.count() == 1
        raise RuntimeError("roll back")
    assert not Job.objects.exists()


def test_enqueue_in_atomic_wakes_workers_only_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        add.enqueue(1, 2)
    assert len(callbacks) == 1


def test_enqueue_many_writes_one_statement_per_batch():
    with CaptureQueriesContext(__import__("django.db").db.connection) as queries:
        handles = add.enqueue_many([(1, 2), [3, 4], {"x": 5, "y": 6}])
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    assert [h.created for h in handles] == [True, True, True]
    rows = {row.job_id: row for row in Job.objects.all()}
    assert [(rows[h.id].args, rows[h.id].kwargs) for h in handles] == [
        ([1, 2], {}),
        ([3, 4], {}),
        ([], {"x": 5, "y": 6}),
    ]


def test_enqueue_many_stores_every_kind_of_json_value_and_fresh_uuid4_ids():
    import uuid

    calls = [
        ("é ✓ \\ \" '", {"k": [1.5, None, True, -(10**30)]}),
        {"x": "\u2028 }{][", "y": {"nested": {"a": []}}},
        ([], 0),
    ] * 400  # more than one batch
    handles = add.enqueue_many(calls)
    rows = {row.job_id: (row.args, row.kwargs) for row in Job.objects.all()}
    expected = [([*c], {}) if isinstance(c, tuple) else ([], c) for c in calls]
    assert [rows[h.id] for h in handles] == [(json.loads(json.dumps(a)), k) for a, k in expected]
    assert len({h.id for h in handles}) == len(calls)
    for handle in handles:
        parsed = uuid.UUID(handle.id)
        assert (parsed.hex, parsed.version, parsed.variant) == (handle.id, 4, uuid.RFC_4122)


@requires_postgres
def test_a_large_enqueue_many_batch_is_split_and_still_all_or_nothing(monkeypatch):
    """jsonb stops at 256 MB: a batch whose arguments would exceed JSON_BATCH_CHARS goes as
    several statements, in one transaction."""
    from django.db import connection

    from django_jobqueue.querysets import producing

    monkeypatch.setattr(producing, "JSON_BATCH_CHARS", 4000)
    calls = [("x" * 200, i) for i in range(40)]  # about 10,000 characters of JSON
    with CaptureQueriesContext(connection) as queries:
        handles = add.enqueue_many(calls)
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 4
    assert sorted(Job.objects.values_list("args", flat=True), key=lambda a: a[1]) == [
        ["x" * 200, i] for i in range(40)
    ]
    assert len(handles) == 40

    statements = []

    def fail_the_third(execute, sql, params, many, context):
        if sql.startswith("INSERT"):
            statements.append(sql)
            if len(statements) == 3:
                raise RuntimeError("the database refused")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail_the_third), pytest.raises(RuntimeError):
        add.enqueue_many([("y" * 200, i) for i in range(40)])
    assert Job.objects.count() == 40  # the two statements that ran were rolled back


def test_enqueue_many_validates_everything_before_writing():
    with pytest.raises(SerializationError, match="args\\[0\\]"):
        add.enqueue_many([(1, 2), (object(), 3)])
    with pytest.raises(InvalidJobError, match="item 1"):
        add.enqueue_many([(1, 2), 7])
    assert not Job.objects.exists()


def test_enqueue_many_with_a_job_id_numbers_the_jobs_and_deduplicates():
    first = add.using(job_id="batch").enqueue_many([(1, 1), (2, 2)])
    again = add.using(job_id="batch").enqueue_many([(1, 1), (2, 2), (3, 3)])
    assert [h.id for h in first] == ["batch-0", "batch-1"]
    assert [h.created for h in again] == [False, False, True]
    assert Job.objects.count() == 3


def test_enqueue_many_of_nothing_is_nothing():
    assert add.enqueue_many([]) == []


def test_enqueue_many_inside_a_rolled_back_transaction_leaves_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue_many([(1, 2)] * 5)
        raise RuntimeError
    assert not Job.objects.exists()


async def test_aenqueue_writes_a_row(transactional_db):
    handle = await async_add.aenqueue(1, 2)
    assert handle.status == "queued"
    assert (await Job.objects.aget(job_id=handle.id)).name == "tests.testapp.jobs.async_add"


def test_enqueue_and_wait_refuses_inside_atomic():
    with transaction.atomic(), pytest.raises(JobQueueError, match=r"transaction\.atomic"):
        add.enqueue_and_wait(1, 2)
    assert not Job.objects.exists()


def test_enqueue_and_wait_names_atomic_requests(settings):
    from django.db import connection

    connection.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        with transaction.atomic(), pytest.raises(JobQueueError, match="non_atomic_requests"):
            add.enqueue_and_wait(1, 2)
    finally:
        connection.settings_dict["ATOMIC_REQUESTS"] = False


def test_enqueue_many_refuses_ids_that_would_grow_too_long():
    with pytest.raises(InvalidJobError, match="1 to 255"):
        add.using(job_id="x" * 254).enqueue_many([(1, 2)])
    assert not Job.objects.exists()


def test_a_signal_receiver_that_raises_does_not_break_enqueue(caplog):
    from django_jobqueue import signals

    def broken(**kwargs):
        raise ValueError("receiver bug")

    signals.job_enqueued.connect(broken)
    try:
        handle = add.enqueue(1, 1)
    finally:
        signals.job_enqueued.disconnect(broken)
    assert handle.created and Job.objects.filter(job_id=handle.id).exists()
    assert "receiver bug" in caplog.text


# -- values that would not come back as given, options out of range ---------------------------


@pytest.mark.parametrize(
    "value", [10**5000, 1e300, 1e16, "\ud800"], ids=["huge-int", "1e300", "1e16", "surrogate"]
)
def test_arguments_that_would_not_come_back_equal_are_refused(value):
    with pytest.raises(SerializationError):
        echo.enqueue(value)
    assert not Job.objects.exists()


def test_floats_that_round_trip_are_accepted():
    handle = echo.enqueue([1.5, 1e15, 2.5e-10, -0.0])
    assert Job.objects.get(job_id=handle.id).args == [[1.5, 1e15, 2.5e-10, -0.0]]


def test_non_str_keyword_names_are_refused():
    with pytest.raises(SerializationError, match="keyword argument names must be str"):
        echo.enqueue_many([{1: "x"}])
    assert not Job.objects.exists()


def test_aware_run_after_with_use_tz_false_is_refused(settings):
    settings.USE_TZ = False
    with pytest.raises(InvalidJobError, match="USE_TZ is False"):
        echo.using(run_after=datetime(2030, 1, 1, tzinfo=UTC)).enqueue(1)


def test_run_after_overflow_is_refused():
    with pytest.raises(InvalidJobError, match="too far"):
        echo.using(run_after=timedelta.max).enqueue(1)


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_over_several_batches_writes_all_or_nothing():
    calls = [(i,) for i in range(1000)] + [({"x": 1},), (object(),)]
    with pytest.raises(SerializationError):
        echo.enqueue_many(calls)
    assert Job.objects.count() == 0
    handles = echo.enqueue_many([(i,) for i in range(2500)])
    assert len(handles) == 2500 and all(h.created for h in handles)
    assert Job.objects.count() == 2500


# -- a handle's wait: its timeout argument, a finished handle ---------------------------------


@pytest.mark.parametrize("timeout", [float("nan"), 0, -1, "5"])
def test_wait_refuses_a_bad_timeout(timeout):
    handle = echo.enqueue(1)
    with pytest.raises(InvalidJobError, match="timeout"):
        handle.wait(timeout=timeout)
    with pytest.raises(InvalidJobError, match="timeout"):
        asyncio.run(handle.await_result(timeout=timeout))


def test_wait_on_a_finished_handle_still_validates(run_worker):
    handle = echo.enqueue(1)
    run_worker()
    handle.refresh()
    assert handle.wait(timeout=1) == 1
    assert isinstance(handle, JobHandle)


# -- arguments against the function's signature ----------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: add.enqueue(1, 2, 3), "too many positional arguments"),
        (lambda: add.enqueue(1), "missing a required argument: 'y'"),
        (lambda: add.enqueue(1, 2, z=2), "unexpected keyword argument 'z'"),
        (lambda: add.enqueue(1, 2, timeout=5), "pass it as .using(timeout=...)"),
        (lambda: add.enqueue_many([(1, 2), (1, 2, 3)]), "too many positional arguments"),
        (lambda: add.using(queue="q", priority=2).enqueue(1), "missing a required argument"),
    ],
)
def test_arguments_that_do_not_fit_the_function_are_refused(call, message):
    with pytest.raises(InvalidJobError) as info:
        call()
    assert message in str(info.value)
    assert "tests.testapp.jobs.add(x, y)" in str(info.value)
    assert not Job.objects.exists()


async def test_aenqueue_checks_the_signature_too():
    with pytest.raises(InvalidJobError, match="unexpected keyword argument 'q'"):
        await async_add.aenqueue(1, 2, q=3)


def test_keywords_defaults_and_var_args_fit():
    @job(name="tests.flexible")
    def flexible(a, b=2, *rest, c, **extra):
        return a

    flexible.enqueue(1, c=3)
    flexible.enqueue(1, 2, 3, 4, c=3, d=5)
    flexible.enqueue_many([{"a": 1, "c": 2}])
    assert Job.objects.count() == 3
