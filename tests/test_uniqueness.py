"""Unique jobs, ``on_duplicate``, metadata and context propagation (docs/guide/uniqueness.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django.utils import timezone, translation

from django_jobqueue import InvalidJobError, JobQueueError, get_job, job
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.producing import start_reruns
from django_jobqueue.testing import run_jobs
from tests.conftest import run_concurrently, wait_until
from tests.testapp.jobs import waits_for_file
from tests.testapp.models import Execution
from tests.testapp.unique_jobs import (
    RERUNS,
    active_language,
    asks_for_a_rerun,
    hourly_report,
    refresh_account,
    shows_metadata,
    sync_account,
)

NAME = "tests.testapp.unique_jobs.refresh_account"


def _expected(name, key, suffix=""):
    text = json.dumps([name, key], sort_keys=True, separators=(",", ":"))
    return f"u:{name}:{hashlib.sha256(text.encode()).hexdigest()}{suffix}"


# -- unique ids ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_unique_id_is_the_same_however_the_call_is_written():
    ids = {
        refresh_account.enqueue(42).id,
        refresh_account.enqueue(account_id=42).id,
        refresh_account.enqueue(42, False).id,
        refresh_account.enqueue(full=False, account_id=42).id,
    }
    assert ids == {_expected(NAME, {"account_id": 42, "full": False})}
    assert Job.objects.count() == 1
    assert refresh_account.enqueue(42, full=True).id not in ids


def test_the_documented_form_is_pinned():
    """The same id in every process and Python version: a literal, not a recomputation."""
    new = refresh_account.new_job([7], {})
    assert new.job_id == (
        "u:tests.testapp.unique_jobs.refresh_account:"
        "bb56ff4f0b8a6f9e8a5d2289b24b1738fd7f196fa2fc9f79fa61647acbc67f62"
    )
    assert new.job_id == _expected(NAME, {"account_id": 7, "full": False})


@pytest.mark.django_db
def test_unique_on_named_arguments_ignores_the_others():
    first = sync_account.enqueue(1, since="2026-01-01")
    second = sync_account.enqueue(account_id=1, since="2026-02-01")
    assert first.id == second.id and first.created and not second.created
    assert sync_account.enqueue(2).id != first.id
    assert first.id == _expected("tests.testapp.unique_jobs.sync_account", {"account_id": 1})


def test_unique_period_puts_the_period_start_in_the_id():
    at = datetime(2026, 12, 7, 10, 59, 59, tzinfo=UTC)
    start = int(datetime(2026, 12, 7, 10, tzinfo=UTC).timestamp())
    one = hourly_report.new_job([5], {}, now=at)
    same = hourly_report.new_job([5], {}, now=at - timedelta(minutes=30))
    later = hourly_report.new_job([5], {}, now=at + timedelta(seconds=1))
    assert one.job_id == same.job_id and one.job_id.endswith(f":{start}")
    assert later.job_id.endswith(f":{start + 3600}")


def test_a_long_name_is_hashed_to_fit_the_id():
    @job(name="x" * 200, unique=True)
    def long_named(value):
        return value

    new = long_named.new_job([1], {})
    assert len(new.job_id) <= 255 and new.job_id.startswith("u:")
    assert "x" * 100 not in new.job_id


@pytest.mark.django_db
def test_enqueue_many_derives_each_id():
    handles = refresh_account.enqueue_many([(1,), {"account_id": 2}, (1, False)])
    assert handles[0].id == handles[2].id != handles[1].id
    assert Job.objects.count() == 2


@pytest.mark.django_db
def test_an_explicit_job_id_wins():
    assert refresh_account.using(job_id="mine").enqueue(1).id == "mine"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique": ("nope",)}, "'nope' is not a parameter"),
        ({"unique": "account_id"}, "tuple of parameter names"),
        ({"unique": True, "unique_period": 0}, "positive int"),
        ({"unique": True, "unique_period": 1.5}, "positive int"),
        ({"unique_period": 60}, "needs unique=True"),
    ],
)
def test_bad_unique_options_are_refused_at_decoration(options, message):
    def account(account_id):
        return account_id

    with pytest.raises(InvalidJobError, match=message):
        job(name="bad.unique", **options)(account)


@pytest.mark.django_db
def test_bad_using_options_are_refused_and_write_nothing():
    for options, message in [
        ({"on_duplicate": "merge"}, "on_duplicate must be one of"),
        ({"metadata": ["not", "a", "dict"]}, "metadata must be a dict"),
        ({"metadata": {1: "int key"}}, "key"),
        ({"metadata": {"when": datetime.now(UTC)}}, "datetime"),
    ]:
        with pytest.raises(JobQueueError, match=message):
            refresh_account.using(**options).enqueue(1)
    with (
        override_settings(JOBQUEUE={"MAX_ARGS_BYTES": 1024}),
        pytest.raises(JobQueueError, match="MAX_ARGS_BYTES"),
    ):
        refresh_account.using(metadata={"blob": "x" * 2000})
    with pytest.raises(JobQueueError, match="datetime"):
        refresh_account.enqueue(datetime.now(UTC))
    assert not Job.objects.exists()


# -- on_duplicate -------------------------------------------------------------------------


@pytest.mark.django_db
def test_replace_debounces_a_queued_job(run_worker):
    later = timedelta(seconds=5)
    for since in range(100):
        handle = sync_account.using(on_duplicate="replace", run_after=later, priority=since)
        handle = handle.enqueue(3, since=since)
    row = Job.objects.get()
    assert (row.kwargs, row.priority) == ({"since": 99}, 99)
    assert row.run_after > timezone.now() + timedelta(seconds=4)
    assert sync_account.using(on_duplicate="replace").enqueue(3, since="last").id == row.job_id
    run_worker()
    assert get_job(row.job_id).result == "last"
    assert Job.objects.get().attempts == 1  # one run, with the last arguments


@pytest.mark.django_db
def test_return_keeps_the_first_arguments():
    sync_account.enqueue(4, since="first")
    sync_account.enqueue(4, since="second")
    assert Job.objects.get().kwargs == {"since": "first"}


@pytest.mark.django_db
def test_rerun_runs_a_finished_job_again(run_worker):
    first = refresh_account.enqueue(9)
    run_worker()
    assert refresh_account.enqueue(9).status == "completed"  # "return": the cached result
    again = refresh_account.using(on_duplicate="rerun").enqueue(9)
    assert again.created and again.status == "queued" and again.id == first.id
    queued = refresh_account.using(on_duplicate="rerun").enqueue(9)
    assert not queued.created and Job.objects.count() == 1
    run_worker()
    row = Job.objects.get()
    assert row.status == "completed" and row.pk != first._pk


@pytest.mark.django_db(transaction=True)
def test_concurrent_replacing_producers_write_one_job():
    def produce(n):
        return lambda: sync_account.using(on_duplicate="replace").enqueue(5, since=n).id

    ids = run_concurrently(*(produce(n) for n in range(8)))
    assert len(set(ids)) == 1
    row = Job.objects.get()
    assert row.kwargs["since"] in range(8)


@pytest.mark.django_db(transaction=True)
def test_concurrent_rerunning_producers_queue_one_new_run(run_worker):
    refresh_account.enqueue(6)
    run_worker()
    ids = run_concurrently(
        *(lambda: refresh_account.using(on_duplicate="rerun").enqueue(6) for _ in range(8))
    )
    assert sum(handle.created for handle in ids) == 1
    assert Job.objects.get().status == "queued"


# -- metadata -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_metadata_is_kept_shown_and_never_an_argument(run_worker):
    metadata = {"tenant": "acme", "request_id": "r-1"}
    handle = shows_metadata.using(metadata=metadata).enqueue(1, k=2)
    assert handle.metadata == metadata
    run_worker()
    done = get_job(handle.id)
    assert done.metadata == metadata
    assert done.result == {"metadata": metadata, "args": [1], "kwargs": {"k": 2}}
    assert Job.objects.get().metadata == metadata


@pytest.mark.django_db
def test_metadata_is_searchable_and_shown_in_the_admin(admin_client):
    handle = shows_metadata.using(metadata={"tenant": "acme-corp"}).enqueue()
    shows_metadata.using(metadata={"tenant": "other"}).enqueue()
    listing = admin_client.get("/admin/django_jobqueue/job/", {"q": "acme-corp"})
    assert listing.status_code == 200
    assert handle.id in listing.content.decode()
    assert listing.context["cl"].result_count == 1
    page = admin_client.get(f"/admin/django_jobqueue/job/{handle.id}/change/")
    assert "acme-corp" in page.content.decode()
    assert "Metadata, context, pending run" in page.content.decode()


# -- context propagation ------------------------------------------------------------------

CALLS: list[str] = []


class Tenant:
    value = "acme"

    @staticmethod
    def capture():
        return Tenant.value

    @staticmethod
    @contextmanager
    def restore(value):
        CALLS.append(f"in:{value}")
        yield
        CALLS.append(f"out:{value}")


class BrokenCapture:
    @staticmethod
    def capture():
        raise RuntimeError("no tenant here")

    @staticmethod
    def restore(value):
        raise AssertionError("never called: nothing was captured")


class BrokenRestore:
    @staticmethod
    def capture():
        return 1

    @staticmethod
    def restore(value):
        raise LookupError("tenant gone")


LOCALE = "django_jobqueue.context.Locale"
HERE = "tests.test_uniqueness"


@pytest.mark.django_db
def test_the_locale_is_captured_and_restored(run_worker):
    with translation.override("fr"):
        handle = active_language.enqueue()
    assert Job.objects.get().context == {LOCALE: "fr"}
    with translation.override("en"):
        run_worker()
    assert get_job(handle.id).result == "fr"


@pytest.mark.django_db
def test_a_user_class_wraps_the_run(run_worker):
    CALLS.clear()
    with override_settings(JOBQUEUE={"CONTEXT": [f"{HERE}.Tenant"]}):
        active_language.enqueue()
        run_worker()
    assert CALLS == ["in:acme", "out:acme"]


@pytest.mark.django_db
def test_a_capture_that_raises_is_logged_and_the_job_still_enqueued(caplog):
    paths = [f"{HERE}.BrokenCapture", f"{HERE}.Tenant", "nowhere.Missing"]
    with (
        override_settings(JOBQUEUE={"CONTEXT": paths}),
        caplog.at_level(logging.WARNING, logger="django_jobqueue"),
    ):
        handle = active_language.enqueue()
    assert Job.objects.get(job_id=handle.id).context == {f"{HERE}.Tenant": "acme"}
    text = caplog.text
    assert "BrokenCapture skipped: capture() raised" in text
    assert "nowhere.Missing skipped" in text


@pytest.mark.django_db
def test_a_restore_that_raises_fails_the_attempt_naming_the_class(run_worker):
    with override_settings(JOBQUEUE={"CONTEXT": [f"{HERE}.BrokenRestore"]}):
        handle = active_language.using(max_attempts=1).enqueue()
        run_worker()
    failed = get_job(handle.id)
    assert failed.status == "failed"
    assert f"{HERE}.BrokenRestore: restore(1) raised LookupError" in failed.error
    letter = DeadLetter.objects.get()
    assert letter.context == {f"{HERE}.BrokenRestore": 1}


@pytest.mark.django_db  # call_command("check") runs the database checks too (Django 6)
def test_check_reports_a_context_class_that_cannot_be_imported():
    with (
        override_settings(JOBQUEUE={"CONTEXT": ["nowhere.Missing", LOCALE]}),
        pytest.raises(SystemCheckError, match=r"django_jobqueue\.E040"),
    ):
        call_command("check")
    with (
        override_settings(JOBQUEUE={"CONTEXT": [LOCALE, 42]}),
        pytest.raises(SystemCheckError, match=r"django_jobqueue\.E041"),
    ):
        call_command("check")


# -- "rerun" of a running job: one more run, pending on its row ---------------------------


@pytest.mark.django_db
def test_rerun_of_a_running_job_pends_one_more_run_queued_once_it_finished():
    first = sync_account.enqueue(8, since="first")
    Job.objects.filter(job_id=first.id).update(status="running", attempts=1)
    handles = [
        sync_account.using(on_duplicate="rerun", priority=n).enqueue(8, since=n) for n in range(100)
    ]
    assert {(h.id, h.status, h.created) for h in handles} == {(first.id, "running", False)}
    row = Job.objects.get()
    assert row.rerun == {"args": [8], "kwargs": {"since": 0}, "priority": 0}
    assert start_reruns("default") == []  # still running: nothing to queue
    past = timezone.now() - timedelta(seconds=1)
    Job.objects.filter(pk=row.pk).update(status="completed", finished_at=past, expires_at=past)
    assert Job.objects.prune(timezone.now()) == 0  # kept until its next run is queued
    (snapshot,) = start_reruns("default")
    assert (snapshot.id, snapshot.status, snapshot.created) == (first.id, "queued", True)
    again = Job.objects.get()
    assert again.pk != row.pk and again.rerun is None and again.attempts == 0
    assert (again.args, again.kwargs, again.priority) == ([8], {"since": 0}, 0)
    assert again.metadata == row.metadata and again.queue == row.queue
    assert start_reruns("default") == []


@pytest.mark.django_db(transaction=True)
def test_a_hundred_reruns_during_a_run_give_exactly_one_more_run(worker_processes, tmp_path):
    gate = tmp_path / "gate"
    job_id = "rerun-gate"
    first = waits_for_file.using(job_id=job_id).enqueue(str(gate), "gated")
    worker_processes.start()
    wait_until(lambda: Job.objects.get(job_id=job_id).status == "running", timeout=30)

    def produce(n):
        def calls():
            rerun = waits_for_file.using(job_id=job_id, on_duplicate="rerun")
            return [rerun.enqueue(str(gate), f"rerun-{n}").created for _ in range(25)]

        return calls

    created = run_concurrently(*(produce(n) for n in range(4)))  # 100 calls, 4 producers
    assert not any(flag for calls in created for flag in calls)
    pending = Job.objects.get(job_id=job_id).rerun
    gate.touch()
    wait_until(lambda: Execution.objects.count() == 2, timeout=30)
    wait_until(lambda: Job.objects.get(job_id=job_id).status == "completed", timeout=30)
    row = Job.objects.get(job_id=job_id)
    assert row.rerun is None and row.pk != first._pk
    tags = sorted(Execution.objects.values_list("tag", flat=True))
    assert tags == sorted(["gated", pending["args"][1]])


@pytest.mark.django_db
def test_replace_of_a_job_no_longer_queued_pends_a_run_as_rerun_does():
    first = sync_account.enqueue(11, since="first")
    Job.objects.filter(job_id=first.id).update(status="running", attempts=1)
    handle = sync_account.using(on_duplicate="replace").enqueue(11, since="second")
    assert (handle.status, handle.created) == ("running", False)
    row = Job.objects.get()
    assert row.kwargs == {"since": "first"} and row.rerun["kwargs"] == {"since": "second"}


@pytest.mark.django_db
def test_run_jobs_runs_the_runs_asked_for_while_a_job_ran():
    RERUNS.clear()
    handle = asks_for_a_rerun.enqueue(3)
    assert run_jobs() == 3
    assert get_job(handle.id).result == 3 and Job.objects.get().rerun is None


@pytest.mark.django_db(transaction=True)
def test_every_enqueue_path_derives_the_same_id(settings):
    expected = _expected(NAME, {"account_id": 12, "full": False})
    assert asyncio.run(refresh_account.aenqueue(12)).id == expected
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}
    assert refresh_account.enqueue_and_wait(13, full=False) == 13
    ran = _expected(NAME, {"account_id": 13, "full": False})
    assert Job.objects.get(job_id=ran).status == "completed"
