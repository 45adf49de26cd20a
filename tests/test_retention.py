"""Retention per outcome: ``RESULT_TTL`` as a dict, ``DEAD_LETTER_TTL`` and
``DEAD_LETTER_MAX`` kept by the workers' pruning and ``jobqueue prune``; nothing unfinished
is ever pruned."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import cancel, conf
from django_jobqueue.checks import check_settings
from django_jobqueue.control import cancel_queued
from django_jobqueue.models import DeadLetter, Job
from tests.testapp.jobs import add, always_fails, noop, other_queue

pytestmark = pytest.mark.django_db

PER_OUTCOME = {"completed": 100, "failed": 5000, "cancelled": 7000}


def _kept(handle) -> float:
    """Seconds the finished job of ``handle`` is kept: ``expires_at - finished_at``."""
    row = Job.objects.get(job_id=handle.id)
    assert row.finished_at is not None and row.expires_at is not None, row.status
    return (row.expires_at - row.finished_at).total_seconds()


def _per_outcome(settings, **more):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": PER_OUTCOME, **more}


# -- the setting -----------------------------------------------------------------------------


def test_a_dict_is_read_per_outcome_with_the_default_for_a_missing_one(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": {"failed": 600}}
    assert conf.settings.RESULT_TTL == {"completed": 3600, "failed": 600, "cancelled": 3600}
    assert conf.result_ttl("failed") == 600 and conf.result_ttl("completed") == 3600
    assert conf.ttl_by_outcome()
    assert check_settings() == []
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": 60}
    assert conf.result_ttl("failed") == 60 and not conf.ttl_by_outcome()


def test_the_outcomes_are_the_finished_statuses():
    from django_jobqueue.base import FINISHED

    assert conf.KEYS["RESULT_TTL"].per == FINISHED


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ({"complete": 60}, ["django_jobqueue.E016"]),
        ({"failed": -1}, ["django_jobqueue.E005"]),
        ({"failed": float("nan")}, ["django_jobqueue.E010"]),
        ({"failed": 10**9}, ["django_jobqueue.E011"]),
        (
            {"done": 1, "failed": -1, "cancelled": "x"},
            ["django_jobqueue.E016", "django_jobqueue.E005", "django_jobqueue.E004"],
        ),
    ],
)
def test_a_bad_dict_is_one_error_per_entry_with_its_own_id(settings, value, ids):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": value}
    assert [error.id for error in check_settings()] == ids


def test_an_unknown_outcome_is_named_with_a_guess_through_manage_py_check(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": {"complete": 60}}
    with pytest.raises(SystemCheckError) as caught:
        call_command("check", stdout=StringIO(), stderr=StringIO())
    text = str(caught.value)
    assert "django_jobqueue.E016" in text and "'complete'" in text
    assert "Did you mean 'completed'?" in text


def test_a_bad_dict_means_the_default_at_run_time_with_a_warning(settings, caplog):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": {"failed": -5}}
    with caplog.at_level(logging.WARNING, logger="django_jobqueue"):
        assert conf.settings.RESULT_TTL == 3600
    assert "RESULT_TTL" in caplog.text and "manage.py check" in caplog.text
    assert not conf.ttl_by_outcome()


# -- each outcome kept for its time ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_each_outcome_is_kept_for_its_time(settings, run_worker):
    _per_outcome(settings, RETRY_BACKOFF=0)
    completed = add.enqueue(1, 2)
    failed = always_fails.using(max_attempts=1).enqueue()
    cancelled = noop.using(run_after=timezone.now() + timedelta(hours=1)).enqueue()
    assert cancel(cancelled.id)
    run_worker()
    assert _kept(completed) == 100
    assert _kept(failed) == 5000
    assert _kept(cancelled) == 7000


@pytest.mark.django_db(transaction=True)
def test_a_jobs_own_result_ttl_wins_for_every_outcome(settings, run_worker):
    _per_outcome(settings)
    completed = add.using(result_ttl=50).enqueue(1, 2)
    failed = always_fails.using(max_attempts=1, result_ttl=50).enqueue()
    cancelled = noop.using(result_ttl=50, run_after=timezone.now() + timedelta(hours=1)).enqueue()
    cancel(cancelled.id)
    run_worker()
    assert [_kept(h) for h in (completed, failed, cancelled)] == [50, 50, 50]
    assert not Job.objects.filter(ttl_by_outcome=True).exists()


def test_cancelling_a_queue_keeps_each_job_for_its_own_time(settings):
    _per_outcome(settings)
    by_outcome = other_queue.enqueue(1)
    own = other_queue.using(result_ttl=50).enqueue(2)
    assert cancel_queued("other") == 2
    assert (_kept(by_outcome), _kept(own)) == (7000, 50)


def test_a_running_job_cancelled_when_it_completes_is_kept_for_the_cancelled_time(settings):
    _per_outcome(settings)
    handle = add.enqueue(1, 2)
    now = timezone.now()
    (claimed,) = Job.objects.claim(
        queue=None, limit=1, worker="w", now=now, lease_until=now + timedelta(minutes=1)
    )
    cancel(handle.id)
    expires = now + timedelta(seconds=claimed.result_ttl)
    done = Job.objects.complete([claimed.fence], now=now, expires_at=expires)
    assert done.cancelled == {claimed.id}
    assert _kept(handle) == 7000


def test_an_int_setting_writes_jobs_as_before(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RESULT_TTL": 77}
    handle = add.enqueue(1, 2)
    row = Job.objects.get(job_id=handle.id)
    assert (row.result_ttl, row.ttl_by_outcome) == (77, False)


# -- dead letters ------------------------------------------------------------------------------


def _letters(*ages_in_seconds: float) -> list[int]:
    now = timezone.now()
    return [
        baker.make_recipe(
            "tests.dead_letter", job_id=f"letter-{i}", failed_at=now - timedelta(seconds=age)
        ).pk
        for i, age in enumerate(ages_in_seconds)
    ]


def _prune(*args: str) -> str:
    out = StringIO()
    call_command("jobqueue", "prune", *args, stdout=out)
    return out.getvalue()


def test_dead_letters_past_their_ttl_are_pruned_by_the_command(settings):
    old, young = _letters(7200, 60)
    assert "dead letters" not in _prune()  # no bound (the default): kept, and not mentioned
    assert DeadLetter.objects.count() == 2
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DEAD_LETTER_TTL": 3600}
    assert _prune("--dry-run").endswith(", and 1 dead letters\n")
    assert DeadLetter.objects.count() == 2
    assert _prune().endswith(", and 1 dead letters\n")
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [young]
    assert old not in DeadLetter.objects.values_list("pk", flat=True)


def test_dead_letters_beyond_the_cap_go_oldest_first_in_batches(settings):
    pks = _letters(50, 40, 30, 20, 10)  # oldest first
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DEAD_LETTER_MAX": 2, "PRUNE_BATCH": 1}
    now = timezone.now()
    assert DeadLetter.objects.prune(now, ttl=None, keep=2, limit=1) == 1
    assert not DeadLetter.objects.filter(pk=pks[0]).exists()  # the oldest went first
    assert _prune().endswith(", and 2 dead letters\n")
    assert sorted(DeadLetter.objects.values_list("pk", flat=True)) == sorted(pks[-2:])


@pytest.mark.django_db(transaction=True)
def test_the_workers_pruning_keeps_the_dead_letter_bounds(settings, run_worker):
    _letters(7200, 60, 30)
    settings.JOBQUEUE = {**settings.JOBQUEUE, "DEAD_LETTER_TTL": 3600, "DEAD_LETTER_MAX": 1}
    run_worker()
    assert DeadLetter.objects.count() == 1
    assert DeadLetter.objects.get().job_id == "letter-2"


@pytest.mark.django_db(transaction=True)
def test_nothing_unfinished_is_ever_pruned(settings, run_worker):
    """With every bound at zero, the workers' pruning and the command delete every finished
    job and every dead letter, and no queued, delayed or running job."""
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "RESULT_TTL": {"completed": 0, "failed": 0, "cancelled": 0},
        "DEAD_LETTER_TTL": 0,
        "DEAD_LETTER_MAX": 0,
        "RETRY_BACKOFF": 0,
    }
    finished = [add.enqueue(1, 2), always_fails.using(max_attempts=1).enqueue()]
    run_worker(queues=["default"])
    assert DeadLetter.objects.count() == 1
    queued = other_queue.enqueue(1)
    delayed = noop.using(run_after=timezone.now() + timedelta(hours=1)).enqueue()
    running = baker.make_recipe(
        "tests.running_job", job_id="running", expires_at=timezone.now() - timedelta(days=1)
    )
    baker.make_recipe(
        "tests.queued_job", job_id="stale-expiry", expires_at=timezone.now() - timedelta(days=1)
    )
    run_worker(queues=["nothing-here"])  # prunes on its first pass
    _prune()
    _prune("--older-than", "0")
    left = dict(Job.objects.values_list("job_id", "status"))
    assert left == {
        queued.id: "queued",
        delayed.id: "queued",
        running.job_id: "running",
        "stale-expiry": "queued",
    }
    assert not any(handle.id in left for handle in finished)
    assert not DeadLetter.objects.exists()
