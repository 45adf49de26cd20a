"""Operations: ``manage.py jobqueue`` (status, health, prune, dead letters, requeue, cancel)
and pruning that keeps up with the queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from django_jobqueue import stats
from django_jobqueue.models import DeadLetter, Job, JobResult
from django_jobqueue.worker import Worker
from tests.conftest import ROOT, wait_until
from tests.testapp.jobs import add, always_fails, noop, other_queue

pytestmark = pytest.mark.django_db


def jobqueue(*args: str) -> str:
    out = StringIO()
    call_command("jobqueue", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def known_sequence(run_worker, settings):
    """Three completed adds and one dead letter in "default", a delayed add there, and one
    job of "other" waiting for two minutes."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    add.enqueue_many([(1, 2), (3, 4), (5, 6)])
    always_fails.using(job_id="doomed", max_attempts=2).enqueue("bad")
    add.using(job_id="later", run_after=timedelta(hours=1)).enqueue(0, 0)
    waiting = other_queue.using(job_id="waiting").enqueue(1)
    Job.objects.filter(job_id=waiting.id).update(
        enqueued_at=timezone.now() - timedelta(seconds=120)
    )
    run_worker(queues=["default"], wait_for_retries=True)
    assert Job.objects.filter(status="completed").count() == 3
    assert DeadLetter.objects.get().job_id == "doomed"


# -- status ------------------------------------------------------------------------------


def test_status_json_after_a_known_sequence_of_jobs(known_sequence):
    report = json.loads(jobqueue("status", "--json"))
    queues = {entry["queue"]: entry for entry in report["queues"]}
    assert list(queues) == ["default", "other"]
    default, other = queues["default"], queues["other"]
    assert default["counts"] == {
        "queued": 1,
        "running": 0,
        "completed": 3,
        "failed": 1,
        "cancelled": 0,
        "blocked": 0,
    }
    # The delayed job is not waiting yet; the "other" job has waited two minutes.
    assert default["oldest_waiting_seconds"] is None
    assert 120 <= other["oldest_waiting_seconds"] < 180
    assert default["finished_last_minute"] + default["finished_this_minute"] == 4
    assert (default["dead_letters"], other["dead_letters"]) == (1, 0)
    assert report["total"]["counts"]["queued"] == 2
    assert report["total"]["counts"]["completed"] == 3
    assert 120 <= report["total"]["oldest_waiting_seconds"] < 180
    assert report["total"]["finished_capped"] is False
    expected_workers = None if not hasattr(stats, "live_workers") else report["live_workers"]
    assert report["live_workers"] == expected_workers
    assert report["finished_count_cap"] == stats.FINISHED_COUNT_CAP


def test_status_text_names_every_queue_and_says_what_is_exact(known_sequence):
    text = jobqueue("status")
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # queue, queued, running, completed, failed, cancelled, blocked, oldest waiting, per min,
    # letters
    assert lines["default"][1:7] == ["1", "0", "3", "1", "0", "0"]
    assert lines["other"][1] == "1" and lines["other"][7].endswith("m")
    assert lines["(all)"][1:4] == ["2", "0", "3"]
    assert "queued, running and blocked are exact" in text


def test_status_marks_capped_finished_counts(known_sequence, monkeypatch):
    monkeypatch.setattr(stats, "FINISHED_COUNT_CAP", 2)
    report = json.loads(jobqueue("status", "--json"))
    default = next(e for e in report["queues"] if e["queue"] == "default")
    assert default["finished_capped"] is True
    assert "3+" in jobqueue("status")


def test_status_watch_redraws_until_interrupted(known_sequence, monkeypatch):
    """--watch draws, waits, draws again; Ctrl-C (KeyboardInterrupt) ends it quietly."""
    draws = []

    def fake_sleep(seconds):
        draws.append(seconds)
        if len(draws) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("django_jobqueue.management.commands.jobqueue.time.sleep", fake_sleep)
    out = jobqueue("status", "--watch", "0.5", "--json")
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) == 2 and draws == [0.5, 0.5]


def test_bad_arguments_are_refused_before_anything_runs():
    with pytest.raises(CommandError, match="number of seconds"):
        call_command("jobqueue", "status", "--watch", "soon")
    with pytest.raises(CommandError, match=">= 0"):
        call_command("jobqueue", "prune", "--older-than", "-5")
    with pytest.raises(CommandError, match="--all"):
        call_command("jobqueue", "requeue")


# -- health ------------------------------------------------------------------------------


def test_health_exit_codes(known_sequence, monkeypatch):
    from django_jobqueue.models import WorkerHeartbeat

    now = timezone.now()
    WorkerHeartbeat.objects.create(
        name="w1", host="h", pid=1, concurrency=1, scheduling=True, started_at=now, last_seen=now
    )
    assert jobqueue("health", "--max-waiting", "600").startswith("healthy")
    with pytest.raises(CommandError) as backed_up:
        call_command("jobqueue", "health", "--max-waiting", "60")
    assert backed_up.value.returncode == 4
    assert "'other' waited" in str(backed_up.value)
    # Only the queues asked about count.
    assert jobqueue("health", "--max-waiting", "60", "--queue", "default").startswith("healthy")
    # No live worker (heartbeats from stats.live_workers()) is 5.
    WorkerHeartbeat.objects.all().delete()
    with pytest.raises(CommandError) as no_worker:
        call_command("jobqueue", "health", "--max-waiting", "600")
    assert no_worker.value.returncode == 5
    assert jobqueue("health", "--max-waiting", "600", "--min-workers", "0").startswith("healthy")


def test_health_exits_3_when_the_database_is_unreachable():
    """A real process against a port nothing listens on: the exit code a probe sees."""
    proc = subprocess.run(
        [sys.executable, "-m", "django", "jobqueue", "health"],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": "postgres://postgres@127.0.0.1:9/nowhere",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    assert "database unreachable" in proc.stderr


def test_status_queue_means_only_this_queue(known_sequence):
    """``--queue`` means "only this queue" as on every other command (it used to add an
    empty queue to the full list); an empty queue named is still listed."""
    report = json.loads(jobqueue("status", "--json", "--queue", "other", "--queue", "empty"))
    empty, other = report["queues"]
    assert (empty["queue"], other["queue"]) == ("empty", "other")
    assert empty["counts"] == dict.fromkeys(empty["counts"], 0)
    assert report["total"]["counts"]["queued"] == 1  # "other"'s job; not "default"'s
    assert report["total"]["dead_letters"] == 0
    assert "default" not in jobqueue("status", "--queue", "other")


def test_django_options_work_after_a_subcommand():
    """``manage.py jobqueue status --settings=...``: Django's own options (``--settings``,
    ``-v``...) are accepted after the subcommand, where users type them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJQ_TEST_DB": connection.settings_dict["NAME"]}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "django", "jobqueue", "status", "--settings=tests.worker_settings",
         "-v0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("django-jobqueue at ")


def test_every_subcommand_has_help():
    proc = subprocess.run(
        [sys.executable, "-m", "django", "jobqueue", "--help"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name in ("status", "health", "prune", "dead-letters", "requeue", "cancel"):
        assert name in proc.stdout


# -- prune -------------------------------------------------------------------------------


def _finished(job_id: str, *, expired: bool, finished_ago: float = 10.0) -> Job:
    handle = add.using(job_id=job_id).enqueue(1, 1)
    now = timezone.now()
    Job.objects.filter(job_id=handle.id).update(
        status="completed",
        finished_at=now - timedelta(seconds=finished_ago),
        expires_at=now + timedelta(seconds=-1 if expired else 3600),
    )
    row = Job.objects.get(job_id=handle.id)
    JobResult.objects.create(job=row, result=2)
    return row


def test_prune_deletes_only_what_is_past_its_ttl_with_the_results(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "PRUNE_BATCH": 2}  # several batches
    for n in range(5):
        _finished(f"old-{n}", expired=True)
    kept = _finished("fresh", expired=False)
    queued = add.using(job_id="queued").enqueue(1, 1)
    DeadLetter.objects.create(
        job_id="dl", name="x", queue="default", max_attempts=1, result_ttl=1, attempts=1,
        error="e", enqueued_at=timezone.now(),
    )  # fmt: skip
    assert jobqueue("prune", "--dry-run") == "would delete 5 finished jobs past their result_ttl\n"
    assert Job.objects.count() == 7
    assert "deleted 5 finished jobs" in jobqueue("prune")
    assert set(Job.objects.values_list("job_id", flat=True)) == {"fresh", queued.id}
    assert list(JobResult.objects.values_list("job_id", flat=True)) == [kept.pk]
    assert DeadLetter.objects.count() == 1


def test_prune_older_than_ignores_the_ttl():
    _finished("long-ago", expired=False, finished_ago=7200)
    _finished("recent", expired=False, finished_ago=10)
    out = jobqueue("prune", "--older-than", "3600", "--dry-run")
    assert out.startswith("would delete 1 finished jobs that finished before")
    jobqueue("prune", "--older-than", "3600")
    assert list(Job.objects.values_list("job_id", flat=True)) == ["recent"]
    assert JobResult.objects.count() == 1


def test_the_prune_verb_is_bounded_and_oldest_first():
    for n in range(3):
        row = _finished(f"e{n}", expired=True)
        Job.objects.filter(pk=row.pk).update(expires_at=timezone.now() - timedelta(hours=3 - n))
    assert Job.objects.prune(timezone.now(), limit=2) == 2
    assert list(Job.objects.values_list("job_id", flat=True)) == ["e2"]
    assert Job.objects.prune(timezone.now(), limit=2) == 1
    assert Job.objects.prune(timezone.now(), limit=2) == 0


@pytest.mark.django_db(transaction=True)
def test_a_worker_prunes_a_backlog_while_it_runs_jobs(settings):
    """5,000 expired jobs wait to be pruned and 500 new ones (result_ttl 0) flow through: a
    running worker deletes them all, in batches of 200 back to back while batches come back
    full, then every PRUNE_INTERVAL, while it runs the new jobs (it used to delete 1,000 a
    minute)."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "PRUNE_BATCH": 200, "PRUNE_INTERVAL": 0.5}
    noop.using(result_ttl=0).enqueue_many([()] * 5000)
    Job.objects.update(status="completed", finished_at=timezone.now(), expires_at=timezone.now())
    noop.using(result_ttl=0).enqueue_many([()] * 500)
    worker = Worker(concurrency=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: worker.processed >= 500, timeout=60)
        wait_until(lambda: not Job.objects.exists(), timeout=30)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


# -- incidents ---------------------------------------------------------------------------


def test_dead_letters_listing_and_requeue_by_name(known_sequence, settings):
    listing = json.loads(jobqueue("dead-letters", "--json"))
    assert listing["groups"] == [
        {
            "name": always_fails.name,
            "queue": "default",
            "count": 1,
            "last_failed_at": listing["groups"][0]["last_failed_at"],
        }
    ]
    assert listing["latest"][0]["job_id"] == "doomed"
    assert listing["latest"][0]["error"] == "RuntimeError: bad"
    assert "doomed" in jobqueue("dead-letters")
    assert jobqueue("requeue", "--name", "nope") == "no dead letter matches: nothing requeued\n"
    with pytest.raises(CommandError, match="no dead letter for job id\\(s\\) 'typo'"):
        jobqueue("requeue", "--job-id", "typo")
    assert DeadLetter.objects.count() == 1
    assert jobqueue("requeue", "--name", always_fails.name, "--dry-run").startswith(
        "would requeue 1"
    )
    assert DeadLetter.objects.count() == 1
    assert jobqueue("requeue", "--name", always_fails.name) == "requeued 1 dead letters\n"
    assert not DeadLetter.objects.exists()
    row = Job.objects.get(job_id="doomed")
    assert (row.status, row.attempts) == ("queued", 0)
    assert jobqueue("dead-letters") == "no dead letters\n"


def test_cancel_a_queue_cancels_only_its_queued_jobs(known_sequence):
    other_queue.using(job_id="second").enqueue(2)
    add.enqueue(7, 7)
    assert jobqueue("cancel", "--queue", "other", "--dry-run") == "would cancel 2 queued jobs\n"
    assert jobqueue("cancel", "--queue", "other") == "cancelled 2 queued jobs of queue 'other'\n"
    statuses = dict(Job.objects.values_list("job_id", "status"))
    assert statuses["waiting"] == statuses["second"] == "cancelled"
    assert statuses["later"] == "queued"
    assert Job.objects.filter(queue="default", status="queued").count() == 2
    row = Job.objects.get(job_id="second")
    assert row.expires_at > row.finished_at and row.last_error == "Cancelled"
