"""Rolling deploys: a worker that claims a job whose name it does not know gives it back
unrun, so a worker that knows it runs it; past ``UNKNOWN_JOB_GRACE`` it is dead-lettered."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from model_bakery import baker

from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.worker import Worker, unknown
from tests.conftest import wait_until
from tests.testapp.jobs import record
from tests.testapp.models import Execution

GHOST = "deployed.later.job"


def _ghost(job_id: str, age: float = 0.0) -> Job:
    job: Job = baker.make_recipe(
        "tests.queued_job",
        job_id=job_id,
        name=GHOST,
        enqueued_at=timezone.now() - timedelta(seconds=age),
    )
    return job


@pytest.mark.django_db(transaction=True)
def test_an_unknown_name_is_given_back_unrun_without_an_attempt(run_worker):
    _ghost("ghost")
    before = timezone.now()
    worker = run_worker()
    row = Job.objects.get(job_id="ghost")
    assert (row.status, row.attempts, row.worker, row.started_at) == ("queued", 0, "", None)
    # Not claimable again at once: no spinning on it; a worker that knows it takes it soon.
    assert before + timedelta(seconds=unknown.GIVE_BACK_SECONDS * 0.9) < row.run_after
    assert row.run_after < timezone.now() + timedelta(seconds=unknown.GIVE_BACK_SECONDS + 1)
    assert not DeadLetter.objects.exists()
    assert worker._unknown.given_back == 1


@pytest.mark.django_db(transaction=True)
def test_past_the_grace_it_is_dead_lettered_with_job_not_registered(run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "UNKNOWN_JOB_GRACE": 60}
    _ghost("old", age=61)
    _ghost("young", age=50)
    run_worker()
    old = Job.objects.get(job_id="old")
    assert old.status == "failed"
    assert DeadLetter.objects.get(job_id="old").attempts == 1
    assert f"No job is registered as '{GHOST}'" in DeadLetter.objects.get(job_id="old").error
    young = Job.objects.get(job_id="young")
    assert (young.status, young.attempts) == ("queued", 0)


@pytest.mark.django_db(transaction=True)
def test_one_log_line_per_name_however_many_give_backs(run_worker, caplog, monkeypatch):
    monkeypatch.setattr(unknown, "SKIP_SECONDS", 0)  # claimed again at each claim
    for n in range(12):
        _ghost(f"ghost-{n}")
    with caplog.at_level(logging.WARNING, logger="django_jobqueue.worker"):
        worker = run_worker(concurrency=1)  # one job per claim: 12 give-backs
    assert worker._unknown.given_back == 12
    lines = [r.getMessage() for r in caplog.records if "gave back" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"named '{GHOST}' unrun" in lines[0] and "UNKNOWN_JOB_GRACE=600s" in lines[0]


@pytest.mark.django_db(transaction=True)
def test_a_name_given_back_is_left_out_of_the_workers_claims(run_worker):
    """Bounded cost: 200 queued jobs of a name the worker does not know cost one claim
    batch and one give-back statement; the jobs of other names behind them run."""
    for n in range(200):
        _ghost(f"ghost-{n}")
    known = [record.enqueue(f"known-{n}") for n in range(5)]
    with CaptureQueriesContext(connection) as queries:
        worker = run_worker(concurrency=8)
    assert worker._unknown.given_back == 8
    give_backs = [q for q in queries.captured_queries if "enqueued_at >" in q["sql"]]
    assert len(give_backs) == 1
    assert all(handle.refresh().status == "completed" for handle in known)
    untouched = Job.objects.filter(name=GHOST, status="queued", attempts=0, run_after=None)
    assert untouched.count() == 192


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_does_not_know_a_name_does_not_claim_it_in_a_loop(settings):
    """A live worker polling every 20 ms: 100 claims later, still only its first batch of
    the unknown name was ever claimed."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.02}
    for n in range(100):
        _ghost(f"ghost-{n}")
    worker = Worker(concurrency=4)

    def stop_after_many_passes() -> None:
        wait_until(lambda: worker._unknown.given_back)
        first = worker.passes
        wait_until(lambda: worker.passes >= first + 100, timeout=30)
        worker.stop()

    stopper = threading.Thread(target=stop_after_many_passes)
    stopper.start()
    worker.run()
    stopper.join(10)
    assert worker._unknown.given_back == 4
    assert Job.objects.filter(name=GHOST, run_after__isnull=False).count() == 4
    assert not Job.objects.filter(name=GHOST).exclude(status="queued").exists()


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_a_rolling_deploy_runs_the_job_once_on_the_worker_that_knows_it(worker_processes):
    old = worker_processes.start(env={"DJQ_UNREGISTER": record.name})
    wait_until(lambda: "worker started" in worker_processes.log(old), timeout=30)
    handle = record.enqueue("deployed")
    wait_until(lambda: "gave back 1 job(s)" in worker_processes.log(old), timeout=20)
    assert Job.objects.get(job_id=handle.id).attempts == 0
    new = worker_processes.start()
    wait_until(lambda: handle.refresh().status == "completed", timeout=30)
    row = Job.objects.get(job_id=handle.id)
    assert row.attempts == 1
    assert Execution.objects.filter(tag="deployed").count() == 1
    assert not DeadLetter.objects.exists()
    assert Execution.objects.get(tag="deployed").pid == new.pid


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_grace_0_dead_letters_at_once_as_before(worker_processes):
    old = worker_processes.start(
        env={"DJQ_UNREGISTER": record.name, "DJQ_JOBQUEUE": '{"UNKNOWN_JOB_GRACE": 0}'}
    )
    handle = record.enqueue("too-early")
    wait_until(lambda: handle.refresh().status == "failed", timeout=30)
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert letter.attempts == 1
    assert f"No job is registered as '{record.name}'" in letter.error
    assert "gave back" not in worker_processes.log(old)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_past_the_grace_a_worker_process_dead_letters_it(worker_processes):
    late = record.enqueue("late")
    Job.objects.filter(job_id=late.id).update(enqueued_at=timezone.now() - timedelta(seconds=61))
    recent = record.enqueue("recent")
    old = worker_processes.start(
        env={"DJQ_UNREGISTER": record.name, "DJQ_JOBQUEUE": '{"UNKNOWN_JOB_GRACE": 60}'}
    )
    wait_until(lambda: late.refresh().status == "failed", timeout=30)
    letter = DeadLetter.objects.get(job_id=late.id)
    assert letter.attempts == 1
    assert f"No job is registered as '{record.name}'" in letter.error
    wait_until(lambda: "gave back 1 job(s)" in worker_processes.log(old), timeout=30)
    assert (recent.refresh().status, recent.attempts) == ("queued", 0)
    assert not Execution.objects.exists()
