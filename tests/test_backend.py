"""JobQueueBackend: Django's Tasks framework (django.tasks on Django 6, the django-tasks
backport on Django 5.2) run by the queue's workers."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import django
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

if django.VERSION >= (6, 0):
    from django.tasks import task, task_backends
    from django.tasks.base import TaskResultStatus
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started

    FRAMEWORK_LOGGER = "django.tasks"
else:
    pytest.importorskip("django_tasks", reason="needs the django-tasks backport on Django 5.2")
    from django_tasks import task, task_backends
    from django_tasks.base import TaskResultStatus
    from django_tasks.exceptions import InvalidTaskBackendError as InvalidTaskBackend
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started

    FRAMEWORK_LOGGER = "django_tasks"

from django_jobqueue import InvalidJobError, SerializationError, cancel, get_job
from django_jobqueue.backend import JobQueueBackend
from django_jobqueue.models import DeadLetter, Job
from tests.testapp.jobs import add
from tests.testapp.models import Execution
from tests.testapp.tasks import (
    add_task,
    async_add_task,
    context_task,
    failing_task,
    non_json_result_task,
    record_task,
    send_mail_task,
)

# Transactional: a worker runs a task on its own thread and connection, where the task's
# running result is read (users' TestCase suites use django_jobqueue.testing instead).
pytestmark = pytest.mark.django_db(transaction=True)


def backend() -> JobQueueBackend:
    return task_backends["default"]


# -- the backend -------------------------------------------------------------------------------


def test_the_backend_supports_every_feature_of_the_framework():
    assert isinstance(backend(), JobQueueBackend)
    assert backend().supports_defer and backend().supports_async_task
    assert backend().supports_get_result and backend().supports_priority
    assert backend().queues == {"default", "emails"}


def test_building_the_backend_touches_no_database():
    with CaptureQueriesContext(connection) as queries:
        built = JobQueueBackend("other", {"QUEUES": ["default"], "OPTIONS": {"MAX_ATTEMPTS": 2}})
        task(backend="default")(add_task.func)  # validation and registration too
    assert built.queues == {"default"}
    assert queries.captured_queries == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"MAX_ATEMPTS": 2}, "Unknown TASKS['x']['OPTIONS'] 'MAX_ATEMPTS'"),
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS must be an int of at least 1"),
        ({"RESULT_TTL": "1h"}, "RESULT_TTL must be an int of at least 0"),
        ({"TIME_LIMIT": -1}, "time_limit must be a positive number"),
    ],
)
def test_bad_options_are_a_configuration_error(options, message):
    with pytest.raises(InvalidTaskBackend) as info:
        JobQueueBackend("x", {"OPTIONS": options})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_name": "nope"}, "Queue 'nope' is not valid for backend."),
        ({"priority": 101}, "priority must be a whole number between -100 and 100."),
        (
            {"takes_context": True},
            "Task takes context but does not have a first argument of 'context'.",
        ),
    ],
)
def test_validate_task_says_what_django_says(options, message):
    with pytest.raises(InvalidTask) as info:
        task(**options)(add.func)
    assert str(info.value) == message


def test_a_queue_name_this_queue_cannot_store_is_refused(settings):
    settings.TASKS = {
        "default": {"BACKEND": "django_jobqueue.backend.JobQueueBackend", "QUEUES": []}
    }
    with pytest.raises(InvalidTask, match="is not a valid queue name"):
        task(queue_name="with space")(add.func)


def test_a_job_function_cannot_also_be_a_task():
    with pytest.raises(InvalidTask, match="is already registered as an @job"):
        task(add.func)
    assert get_job(add.enqueue(1, 2).id).name == "tests.testapp.jobs.add"


def test_run_after_must_be_aware():
    with pytest.raises(InvalidTask, match="run_after must be an aware datetime"):
        add_task.using(run_after=timezone.now().replace(tzinfo=None)).enqueue(1, 2)
    assert not Job.objects.exists()


# -- enqueue and results -------------------------------------------------------------------------


def test_enqueue_writes_a_job_whose_id_is_the_result_id():
    result = add_task.enqueue(1, 2)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == ([1, 2], {}, "default")
    assert result.enqueued_at is not None and result.started_at is None
    assert (result.errors, result.worker_ids, result.attempts) == ([], [], 0)
    handle = get_job(result.id)
    assert handle is not None
    assert (handle.name, handle.queue, handle.status) == (add_task.module_path, "default", "queued")
    row = Job.objects.get(job_id=result.id)
    assert row.attempt_log == []
    assert row.enqueued_at == result.enqueued_at
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    fetched = backend().get_result(result.id)
    assert (fetched.status, fetched.task.func, fetched.args) == (
        TaskResultStatus.READY,
        add_task.func,
        [1, 2],
    )


def test_a_plain_job_keeps_a_null_attempt_log():
    handle = add.enqueue(1, 2)
    assert Job.objects.get(job_id=handle.id).attempt_log is None


def test_priority_queue_and_run_after_become_the_jobs_own():
    later = timezone.now() + timedelta(hours=1)
    result = send_mail_task.using(run_after=later).enqueue("a@example.com")
    row = Job.objects.get(job_id=result.id)
    assert (row.queue, row.priority, row.run_after) == ("emails", 10, later)
    assert backend().get_result(result.id).task.queue_name == "emails"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: add_task.enqueue(1), InvalidJobError, "missing a required argument: 'y'"),
        (lambda: add_task.enqueue(1, 2, 3), InvalidJobError, "too many positional arguments"),
        (lambda: add_task.enqueue(1, {2}), SerializationError, "set"),
        (
            lambda: context_task.enqueue(object()),
            SerializationError,
            "object",
        ),
    ],
)
def test_bad_arguments_are_refused_and_write_nothing(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
    assert not Job.objects.exists()


def test_a_non_json_argument_names_djangos_unsupported_type_too():
    """Django's tests/tasks expect "Unsupported type" (django.utils.json's wording) in the
    TypeError; this queue's own message stays, with the path and what to pass instead."""
    with pytest.raises(TypeError) as info:
        add_task.enqueue(1, timezone.now())
    assert "Unsupported type: <class 'datetime.datetime'>" in str(info.value)
    assert "args[1] is a datetime.datetime" in str(info.value) and "isoformat()" in str(info.value)


def test_a_non_json_result_fails_as_with_djangos_backends(run_worker, caplog, settings):
    """A TypeError attempt (as Django's own backends record one), logged by the framework's
    logger, whose traceback carries this queue's message and Django's wording."""
    settings.TASKS = {
        "default": {
            "BACKEND": "django_jobqueue.backend.JobQueueBackend",
            "OPTIONS": {"MAX_ATTEMPTS": 1},
        }
    }
    caplog.set_level(logging.INFO, logger=FRAMEWORK_LOGGER)
    result = non_json_result_task.enqueue()
    run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is TypeError
    assert "result['when'] is a builtins.set" in error.traceback
    assert "Unsupported type: <class 'set'>" in error.traceback
    failures = [r for r in caplog.records if r.name == FRAMEWORK_LOGGER and r.exc_info]
    assert [r.levelno for r in failures] == [logging.ERROR]


@pytest.mark.parametrize("bad_id", ["", "x" * 256, "nul\x00", "\ud800", 42, None, "no-such-id"])
def test_unknown_or_malformed_ids_do_not_exist(bad_id):
    with pytest.raises(TaskResultDoesNotExist):
        backend().get_result(bad_id)


def test_a_plain_jobs_id_is_not_a_task_result():
    handle = add.enqueue(1, 2)
    with pytest.raises(TaskResultDoesNotExist, match="is not a task this process knows"):
        backend().get_result(handle.id)


def test_a_finished_task_is_filled_faithfully(run_worker):
    result = add_task.enqueue(2, 3)
    worker = run_worker()
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    assert result.worker_ids == [worker.name] and result.attempts == 1
    assert result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert get_job(result.id).result == 5


def test_async_tasks_run_on_the_worker(run_worker):
    result = async_add_task.enqueue(4, 5)
    run_worker()
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 9)


def test_a_task_that_keeps_failing_has_one_error_and_worker_per_attempt(run_worker):
    result = failing_task.enqueue("kaput")
    worker = run_worker(wait_for_retries=True)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3 == len(result.errors)
    assert result.worker_ids == [worker.name] * 3
    assert {error.exception_class_path for error in result.errors} == {"builtins.ValueError"}
    assert all("ValueError: kaput" in error.traceback for error in result.errors)
    assert result.errors[0].exception_class is ValueError
    assert result.started_at < result.last_attempted_at <= result.finished_at
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    # A dead letter, which outlives the job's result_ttl: the result stays FAILED.
    Job.objects.filter(job_id=result.id).delete()
    letter = DeadLetter.objects.get(job_id=result.id)
    assert len(letter.attempt_log) == 3
    again = backend().get_result(result.id)
    assert (again.status, again.attempts, len(again.errors)) == (TaskResultStatus.FAILED, 3, 3)
    assert again.finished_at == letter.failed_at


def test_options_max_attempts_applies_to_the_backends_tasks(settings, run_worker):
    settings.TASKS = {
        "default": {
            "BACKEND": "django_jobqueue.backend.JobQueueBackend",
            "OPTIONS": {"MAX_ATTEMPTS": 1, "RESULT_TTL": 60},
        }
    }
    result = failing_task.enqueue()
    row = Job.objects.get(job_id=result.id)
    assert (row.max_attempts, row.result_ttl) == (1, 60)
    run_worker()
    result.refresh()
    assert (result.status, result.attempts) == (TaskResultStatus.FAILED, 1)


def test_a_retried_attempt_shows_in_the_context_and_the_result(run_worker, tmp_path):
    counter = tmp_path / "counter"
    result = context_task.enqueue(str(counter))
    worker = run_worker(wait_for_retries=True)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    seen = result.return_value
    # The context of the second attempt: attempt 2, a running result with both workers and
    # the first attempt's error.
    assert seen == {
        "attempt": 2,
        "id": result.id,
        "status": str(TaskResultStatus.RUNNING),
        "worker_ids": [worker.name, worker.name],
        "errors": ["builtins.ConnectionError"],
    }
    assert result.attempts == 2 and len(result.errors) == 1
    assert "first attempt fails" in result.errors[0].traceback


def test_a_cancelled_task_is_failed_with_a_cancelled_error():
    result = add_task.enqueue(1, 1)
    assert cancel(result.id) is True
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in result.errors] == [
        "django_jobqueue.exceptions.JobCancelledError"
    ]
    assert result.worker_ids == [] and result.finished_at is not None


def test_deferred_tasks_wait_and_priority_orders_claims(run_worker):
    later = add_task.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    low = record_task.using(priority=-5).enqueue("low")
    high = record_task.using(priority=50).enqueue("high")
    run_worker()
    assert backend().get_result(later.id).status == TaskResultStatus.READY
    assert list(Execution.objects.order_by("id").values_list("tag", flat=True)) == ["high", "low"]
    assert backend().get_result(low.id).status == TaskResultStatus.SUCCESSFUL
    assert backend().get_result(high.id).status == TaskResultStatus.SUCCESSFUL


async def test_aenqueue_and_aget_result():
    result = await add_task.aenqueue(1, 2)
    fetched = await backend().aget_result(result.id)
    assert (fetched.id, fetched.status) == (result.id, TaskResultStatus.READY)
    assert (await add_task.aget_result(result.id)).id == result.id


# -- signals and logging ------------------------------------------------------------------------


@pytest.fixture
def received():
    seen = []

    def receiver(signal_name):
        def handler(sender, task_result, **kwargs):
            seen.append((signal_name, sender, task_result.id, task_result.status))

        return handler

    handlers = {
        "enqueued": receiver("enqueued"),
        "started": receiver("started"),
        "finished": receiver("finished"),
    }
    task_enqueued.connect(handlers["enqueued"])
    task_started.connect(handlers["started"])
    task_finished.connect(handlers["finished"])
    yield seen
    task_enqueued.disconnect(handlers["enqueued"])
    task_started.disconnect(handlers["started"])
    task_finished.disconnect(handlers["finished"])


def test_the_frameworks_signals_are_sent_with_the_backend_as_sender(run_worker, received):
    result = add_task.enqueue(1, 2)
    assert received == [("enqueued", JobQueueBackend, result.id, TaskResultStatus.READY)]
    run_worker()
    assert received[1:] == [
        ("started", JobQueueBackend, result.id, TaskResultStatus.RUNNING),
        ("finished", JobQueueBackend, result.id, TaskResultStatus.SUCCESSFUL),
    ]


def test_plain_jobs_send_no_task_signals(run_worker, received):
    add.enqueue(1, 2)
    run_worker()
    assert received == []


def test_a_failed_task_is_logged_with_its_traceback(run_worker, received, caplog, settings):
    settings.TASKS = {
        "default": {
            "BACKEND": "django_jobqueue.backend.JobQueueBackend",
            "OPTIONS": {"MAX_ATTEMPTS": 1},
        }
    }
    caplog.set_level(logging.INFO, logger=FRAMEWORK_LOGGER)
    result = failing_task.enqueue("logged")
    run_worker()
    assert received[-1] == ("finished", JobQueueBackend, result.id, TaskResultStatus.FAILED)
    failures = [r for r in caplog.records if r.name == FRAMEWORK_LOGGER and r.exc_info]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    assert result.id in failures[0].getMessage()
    assert failures[0].exc_info[0] is ValueError
    assert "ValueError: logged" in caplog.text and "failing_task" in caplog.text


def test_a_task_adds_reads_only_and_plain_jobs_nothing(run_worker):
    """Plain jobs' statements are pinned in test_worker.py. A task adds one read on its own
    thread (its running result, for task_started and TaskContext) and one on the worker's
    connection (the stored result, for task_finished); its writes are the plain job's."""
    setup = ("SET synchronous_commit", "SELECT reltuples", "ANALYZE")  # once per connection
    # BEGIN/COMMIT: whether a claim runs in the short path's transaction depends on the
    # durations seen (commits per job are pinned in test_hot_path.py).
    control = ("BEGIN", "COMMIT")

    def statements(queries):
        return [
            q["sql"]
            for q in queries.captured_queries
            if not q["sql"].startswith(setup) and q["sql"] not in control
        ]

    add.enqueue(1, 1)
    with CaptureQueriesContext(connection) as plain:
        run_worker()
    add_task.enqueue(1, 1)
    with CaptureQueriesContext(connection) as tasks:
        run_worker()
    plain_sql, task_sql = statements(plain), statements(tasks)
    assert len(task_sql) == len(plain_sql) + 1, task_sql

    def writes(sqls):  # the write statements, values left out
        return [
            re.sub(r"'[^']*'|\b\d+\b", "?", sql)
            for sql in sqls
            if sql.startswith(("UPDATE", "WITH", "INSERT"))
        ]

    assert writes(task_sql) == writes(plain_sql)


# -- a real worker process ---------------------------------------------------------------------


@pytest.mark.subprocess
def test_a_runjobworker_process_runs_autodiscovered_tasks(worker_processes):
    result = record_task.enqueue("from a process")
    mail = send_mail_task.enqueue("b@example.com")
    proc = worker_processes.start("--burst")
    assert proc.wait(timeout=60) == 0, worker_processes.log(proc)
    result.refresh()
    mail.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert mail.return_value == "sent to b@example.com"
    assert Execution.objects.get(tag="from a process").pid == proc.pid
    assert result.worker_ids[0].split(":")[1] == str(proc.pid)
    log = worker_processes.log(proc)
    assert "tests.testapp.tasks.record_task" in log  # its start line lists the tasks


# -- testing helpers -----------------------------------------------------------------------------


def test_eager_returns_the_finished_result_and_sends_every_signal(settings, received):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}
    result = add_task.enqueue(3, 4)
    assert (result.status, result.return_value, result.attempts) == (
        TaskResultStatus.SUCCESSFUL,
        7,
        1,
    )
    assert [name for name, *_ in received] == ["enqueued", "started", "finished"]


@pytest.mark.django_db(transaction=False)
def test_run_jobs_runs_tasks_in_a_testcase_transaction():
    from django_jobqueue.testing import enqueued, run_jobs

    result = context_task.enqueue()
    assert [job.name for job in enqueued()] == [context_task.module_path]
    assert run_jobs() == 1
    result.refresh()
    assert result.return_value["attempt"] == 1 and result.return_value["id"] == result.id


# -- attempts that end elsewhere -----------------------------------------------------------------


def test_an_attempt_lost_with_its_worker_is_an_error_and_a_worker_id(run_worker):
    result = add_task.enqueue(1, 2)
    past = timezone.now() - timedelta(seconds=10)
    claimed = Job.objects.claim(
        queue=None, limit=1, worker="gone:1:abc", now=past, lease_until=past
    )
    assert [job.job_id for job in claimed] == [result.id]
    worker = run_worker(wait_for_retries=True)  # reaps the lease, then runs attempt 2
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 3
    assert result.worker_ids == ["gone:1:abc", worker.name]
    (error,) = result.errors
    assert error.exception_class_path == "django_jobqueue.exceptions.JobQueueError"
    assert "Lease expired" in error.traceback and "gone:1:abc" in error.traceback


def test_a_requeued_dead_letter_runs_again_from_attempt_zero(settings, run_worker):
    from django_jobqueue.deadletters import requeue

    settings.TASKS = {
        "default": {
            "BACKEND": "django_jobqueue.backend.JobQueueBackend",
            "OPTIONS": {"MAX_ATTEMPTS": 1},
        }
    }
    result = failing_task.enqueue()
    run_worker()
    assert backend().get_result(result.id).status == TaskResultStatus.FAILED
    assert requeue(DeadLetter.objects.all()) == 1
    again = backend().get_result(result.id)
    assert (again.status, again.errors, again.worker_ids) == (TaskResultStatus.READY, [], [])
    assert Job.objects.get(job_id=result.id).attempt_log == []
