"""A database of its own: ``JOBQUEUE["DATABASE"] = "queue"`` with ``QueueRouter`` puts every
table of the queue on the second test database ("queue", tests/settings.py); ``enqueue()``
inside ``atomic()`` on the site's database writes the job when that transaction commits;
the checks refuse what cannot work; a real worker serves the queue there."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections, router, transaction
from django.urls import reverse

from django_jobqueue import routers
from django_jobqueue.exceptions import JobQueueError
from django_jobqueue.models import DeadLetter, Job, JobResult, Schedule
from django_jobqueue.routers import QueueRouter, queue_database
from django_jobqueue.testing import run_jobs
from tests.conftest import wait_until
from tests.testapp.jobs import add, record
from tests.testapp.models import Execution

BOTH = ["default", "queue"]


@pytest.fixture
def own_database(settings: Any) -> Any:
    """The queue on "queue" (QueueRouter is in the tests' DATABASE_ROUTERS)."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DATABASE": "queue"}
    return settings


def _jobs(alias: str) -> list[str]:
    return list(Job.objects.using(alias).values_list("job_id", flat=True))


# -- one alias, and a router that agrees -------------------------------------------------------


def test_without_the_key_the_queue_is_where_the_routers_send_job(settings):
    assert queue_database() == "default"
    assert QueueRouter().db_for_write(Job) is None
    assert QueueRouter().allow_migrate("queue", "django_jobqueue") is None


def test_the_router_sends_every_model_of_the_app_to_the_alias(own_database):
    assert queue_database() == "queue"
    for model in (Job, JobResult, DeadLetter, Schedule):
        assert router.db_for_read(model) == router.db_for_write(model) == "queue"
    assert router.db_for_write(Execution) == "default"
    ours = QueueRouter()
    assert ours.allow_migrate("queue", "django_jobqueue") is True
    assert ours.allow_migrate("default", "django_jobqueue") is False
    assert ours.allow_migrate("default", "testapp") is None
    assert ours.allow_relation(Job(), DeadLetter()) is True
    assert ours.allow_relation(Job(), Execution()) is None


# -- bad input: manage.py check ----------------------------------------------------------------


def _ids() -> list[str]:
    """The ids of the database checks (E050-E053) that fail."""
    return [
        m.id for m in run_checks(tags=["compatibility"]) if m.id.startswith("django_jobqueue.E05")
    ]


def test_a_correct_setup_passes_the_checks(own_database):
    assert _ids() == []


def test_an_alias_not_in_databases_is_e040(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DATABASE": "nowhere"}
    assert _ids() == ["django_jobqueue.E050"]


def test_the_key_without_the_router_is_e041(own_database):
    own_database.DATABASE_ROUTERS = []
    assert _ids() == ["django_jobqueue.E051"]
    with pytest.raises(SystemCheckError, match=r"E051.*QueueRouter is not in DATABASE_ROUTERS"):
        call_command("check")


class _JobElsewhere:
    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "default" if model is Job else None


class _DeadLettersElsewhere:
    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "queue" if model is DeadLetter else None


def test_a_router_ahead_of_queue_router_is_e043(own_database):
    own_database.DATABASE_ROUTERS = [_JobElsewhere(), QueueRouter()]
    assert "django_jobqueue.E053" in _ids()


def test_routers_that_split_the_app_are_e042(settings):
    settings.DATABASE_ROUTERS = [_DeadLettersElsewhere()]
    (error,) = [m for m in run_checks(tags=["compatibility"]) if m.id == "django_jobqueue.E052"]
    assert "DeadLetter -> 'queue'" in error.msg and "Job -> 'default'" in error.msg


# -- enqueue() inside atomic() on the site's database ------------------------------------------


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_enqueue_in_a_site_transaction_writes_the_job_when_it_commits(own_database):
    with transaction.atomic():  # "default": the site's data
        Execution.objects.create(tag="order", pid=0)
        handle = add.enqueue(2, 3)
        assert (handle.status, handle.created) == ("queued", True)
        assert _jobs("queue") == []  # not written yet: it waits for this commit
        with pytest.raises(JobQueueError, match=r"cannot run inside transaction\.atomic"):
            add.enqueue_and_wait(1, 1)
    assert _jobs("queue") == [handle.id]
    assert _jobs("default") == []
    assert handle.created and handle.status == "queued"
    assert run_jobs() == 1
    assert handle.refresh().status == "completed" and handle.result == 5


@pytest.mark.django_db(databases=BOTH)
def test_enqueue_and_wait_names_the_site_database_under_atomic_requests(own_database):
    site = connections["default"]
    site.settings_dict["ATOMIC_REQUESTS"] = True
    try:
        with transaction.atomic(), pytest.raises(JobQueueError, match=r"\['default'\]\['ATOMIC"):
            add.enqueue_and_wait(1, 2)
    finally:
        site.settings_dict["ATOMIC_REQUESTS"] = False
    assert _jobs("queue") == []


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_rolled_back_site_transaction_writes_no_job(own_database):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        handle = add.enqueue(2, 3)
        1 / 0  # noqa: B018
    assert handle.id and _jobs("queue") == [] and _jobs("default") == []
    with transaction.atomic(), transaction.atomic(using="queue"):
        add.enqueue(1, 1)
        transaction.set_rollback(True, using="queue")  # the queue's own transaction: joined
    assert _jobs("queue") == []


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_eager_runs_the_job_once_the_site_transaction_commits(own_database):
    own_database.JOBQUEUE = {**own_database.JOBQUEUE, "EAGER": True}
    with transaction.atomic():
        handle = add.enqueue(20, 22)
        assert handle.status == "queued" and _jobs("queue") == []
    assert (handle.status, handle.result) == ("completed", 42)
    assert Job.objects.get(job_id=handle.id).status == "completed"


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_the_write_waits_for_every_open_transaction(own_database):
    written: list[str] = []
    with transaction.atomic():
        with transaction.atomic(using="queue"):
            routers.after_commits(["default", "queue"], lambda: written.append("job"))
        assert written == []  # "queue" committed, "default" not yet
    assert written == ["job"]
    with pytest.raises(ZeroDivisionError), transaction.atomic(using="queue"):
        with transaction.atomic():
            routers.after_commits(["default", "queue"], lambda: written.append("again"))
        1 / 0  # noqa: B018
    assert written == ["job"]


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_task_of_django_tasks_waits_for_the_site_commit_too(own_database):
    tasks = pytest.importorskip("tests.testapp.tasks", exc_type=ImportError)
    with transaction.atomic():
        result = tasks.add_task.enqueue(1, 2)
        assert _jobs("queue") == []
    assert _jobs("queue") == [result.id]


# -- a real worker, status and the admin on the queue's database ------------------------------


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_a_worker_serves_the_queue_on_its_own_database(own_database, worker_processes):
    with transaction.atomic():
        handles = record.enqueue_many([("own-1",), ("own-2",)])
    worker_processes.start("--concurrency", "1", env={"DJQ_JOBQUEUE": '{"DATABASE": "queue"}'})
    wait_until(
        lambda: Job.objects.filter(status="completed").count() == 2, timeout=30, interval=0.1
    )
    assert sorted(_jobs("queue")) == sorted(handle.id for handle in handles)
    assert _jobs("default") == []
    assert set(Execution.objects.values_list("tag", flat=True)) == {"own-1", "own-2"}
    out = StringIO()
    call_command("jobqueue", "status", "--json", stdout=out)
    (queue,) = json.loads(out.getvalue())["queues"]
    assert queue["counts"]["completed"] == 2


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_the_admin_lists_the_jobs_on_the_queue_database(own_database, admin_client):
    handle = add.enqueue(4, 4)
    page = admin_client.get(reverse("admin:django_jobqueue_job_changelist")).content.decode()
    assert handle.id in page
    assert (
        admin_client.get(
            reverse("admin:django_jobqueue_job_change", args=[Job.objects.get().pk])
        ).status_code
        == 200
    )
    assert routers.queue_database() == "queue" and _jobs("default") == []
