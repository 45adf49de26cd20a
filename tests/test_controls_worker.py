"""The worker's controls, worker side: JobContext, progress, retry rules, cancelling a
running job. Real worker subprocesses unless a test pins statements of an in-process run."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import JobCancelledError, JobFailedError, cancel, get_job, signals
from django_jobqueue.models import DeadLetter, Job, JobResult
from django_jobqueue.notifications import hub
from django_jobqueue.notifications.names import cancel_channel, cancel_message
from tests.conftest import requires_redis, wait_until
from tests.testapp.jobs import (
    add,
    async_context_facts,
    async_until_cancelled,
    call_partner,
    context_facts,
    progress_steps,
    retry_later,
    until_cancelled,
)
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def _row(job_id: str) -> Job:
    return Job.objects.get(job_id=job_id)


def _finished(job_id: str) -> bool:
    return _row(job_id).status in ("completed", "failed", "cancelled")


def _worker_env(**settings: Any) -> dict[str, str]:
    return {"DJQ_JOBQUEUE": json.dumps(settings)}


class Waiter(threading.Thread):
    """Wait for a job's result in a thread (``handle.wait``, or ``await_result`` on its own
    event loop when ``use_async``); keep what it returned or raised."""

    def __init__(self, handle: Any, *, use_async: bool = False) -> None:
        super().__init__(daemon=True)
        self.handle = handle
        self.use_async = use_async
        self.outcome: Any = None

    def run(self) -> None:
        try:
            if self.use_async:
                self.outcome = asyncio.run(self.handle.await_result(timeout=30))
            else:
                self.outcome = self.handle.wait(timeout=30)
        except Exception as exc:
            self.outcome = exc
        finally:
            connections.close_all()

    def result(self) -> Any:
        self.join(35)
        assert not self.is_alive()
        return self.outcome


# -- JobContext --------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_the_context_tells_each_attempt_its_facts(worker_processes):
    handle = context_facts.enqueue(2)  # fails attempts 1 and 2
    async_handle = async_context_facts.enqueue()
    worker_processes.start("--queue", "facts", "--queue", "default", "--name", "ctx-worker")
    assert handle.wait(timeout=30) == [handle.id, 3, 3, "facts", "ctx-worker"]
    tags = Execution.objects.order_by("id").values_list("tag", flat=True)
    seen = [json.loads(tag) for tag in tags]
    assert seen == [[handle.id, attempt, 3, "facts", "ctx-worker"] for attempt in (1, 2, 3)]
    assert async_handle.wait(timeout=30) == [async_handle.id, 1, 3, "default", "ctx-worker"]


# -- retry rules -------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_retry_on_retries_listed_errors_and_dead_letters_others_at_once(worker_processes):
    listed = call_partner.enqueue("connection")
    unlisted = call_partner.enqueue("value")
    worker_processes.start()
    with pytest.raises(JobFailedError) as info:
        unlisted.wait(timeout=30)
    reason = (
        "ValueError: value trouble (not retried: ValueError is not in retry_on "
        "(ConnectionError, TimeoutError))"
    )
    assert info.value.error == reason
    with pytest.raises(JobFailedError) as info:
        listed.wait(timeout=30)
    assert info.value.error == "ConnectionError: connection trouble"
    letters = {letter.job_id: letter for letter in DeadLetter.objects.all()}
    assert (letters[unlisted.id].attempts, letters[unlisted.id].error) == (1, reason)
    assert letters[listed.id].attempts == 3
    assert Execution.objects.filter(tag="partner-value").count() == 1
    assert Execution.objects.filter(tag="partner-connection").count() == 3
    assert _row(unlisted.id).status == "failed"


@pytest.mark.subprocess
def test_retry_after_delays_the_next_attempt(worker_processes):
    handle = retry_later.enqueue(3, "partner busy")
    last = retry_later.using(max_attempts=1).enqueue(0, "partner busy")
    worker_processes.start()
    row = wait_until(
        lambda: (r := _row(handle.id)).status == "queued" and r.attempts == 1 and r, timeout=30
    )
    # The backoff of the test settings is at most 0.2s: the delay is Retry's 3 seconds.
    assert row.run_after - row.started_at >= timedelta(seconds=2.5)
    assert row.last_error == "Retry: partner busy"
    assert handle.wait(timeout=30) == 2
    second_run = Execution.objects.get(tag="retry-later-2")
    assert second_run.at >= row.run_after
    # Past max_attempts, Retry dead-letters with its reason.
    with pytest.raises(JobFailedError, match="Retry: partner busy"):
        last.wait(timeout=30)
    assert DeadLetter.objects.get(job_id=last.id).error == "Retry: partner busy"


# -- progress ----------------------------------------------------------------------------------


@pytest.mark.subprocess
def test_progress_shows_while_the_job_runs_and_the_last_value_lands(worker_processes, tmp_path):
    go = tmp_path / "go"
    handle = progress_steps.enqueue(str(go))
    # Throttled to one write per 30s: 2/3 and 3/3 come within it, so 3/3 lands only because
    # the last value is always written before the outcome.
    worker_processes.start(env=_worker_env(PROGRESS_INTERVAL=30))
    running = wait_until(lambda: (job := get_job(handle.id)).progress and job, timeout=30)
    assert running.status == "running"
    assert (running.progress["current"], running.progress["total"]) == (1, 3)
    assert running.progress["message"] == "one" and running.progress["updated_at"]
    go.write_text("go")
    assert handle.wait(timeout=30) == "ok"
    assert handle.refresh().progress["current"] == 3
    assert handle.progress["message"] == "done"
    assert get_job(handle.id).progress == handle.progress


def test_progress_writes_are_throttled_and_jobs_without_progress_cost_none(run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "PROGRESS_INTERVAL": 30}
    reporting = progress_steps.enqueue("", many=2000)
    quiet = add.enqueue(1, 2)
    with CaptureQueriesContext(connection) as queries:
        run_worker()
    writes = [q["sql"] for q in queries.captured_queries if "SET progress" in q["sql"]]
    assert 1 <= len(writes) <= 2, writes  # the first value, maybe; the last one, surely
    assert all(quiet.id not in w for w in writes)
    assert get_job(reporting.id).progress["message"] == "done"
    assert get_job(quiet.id).progress is None


# -- cancelling --------------------------------------------------------------------------------


def test_cancelling_a_queued_job_answers_sync_and_async_waiters():
    handle = add.enqueue(1, 2)
    sync_waiter, async_waiter = Waiter(handle), Waiter(handle, use_async=True)
    sync_waiter.start()
    async_waiter.start()
    wait_until(lambda: _row(handle.id).notify)  # both subscribed, or at least one of them
    assert cancel(handle.id) is True
    for waiter in (sync_waiter, async_waiter):
        assert isinstance(waiter.result(), JobCancelledError)


def _cancel_running(worker_processes, tmp_path, env):
    marker, async_marker = tmp_path / "sync", tmp_path / "async"
    sync_job = until_cancelled.enqueue(str(marker))
    async_job = async_until_cancelled.enqueue(str(async_marker))
    proc = worker_processes.start("--concurrency", "2", env=env)
    wait_until(lambda: marker.exists() and async_marker.exists(), timeout=30)
    waiters = [Waiter(sync_job), Waiter(async_job, use_async=True)]
    for waiter in waiters:
        waiter.start()
    started = time.monotonic()
    assert sync_job.cancel() is True and async_job.cancel() is True
    for waiter in waiters:
        assert isinstance(waiter.result(), JobCancelledError), waiter.outcome
    elapsed = time.monotonic() - started
    assert marker.read_text() == "saw cancel_requested"
    assert async_marker.read_text() == "got CancelledError"
    for handle in (sync_job, async_job):
        row = _row(handle.id)
        assert (row.status, row.last_error) == ("cancelled", "Cancelled")
        assert not JobResult.objects.filter(job=row, result__isnull=False).exists()
    assert not DeadLetter.objects.exists()
    wait_until(lambda: "outcome=cancelled" in worker_processes.log(proc))
    return elapsed


@pytest.mark.subprocess
@requires_redis
def test_a_running_cancel_reaches_the_worker_by_notification(worker_processes, tmp_path):
    # No poll and no heartbeat for 60s: only the notification can tell the worker in time.
    env = _worker_env(POLL_INTERVAL=60, HEARTBEAT_INTERVAL=60, LEASE_SECONDS=180)
    assert _cancel_running(worker_processes, tmp_path, env) < 20


@pytest.mark.subprocess
def test_a_running_cancel_reaches_a_worker_without_a_layer_at_its_heartbeat(
    worker_processes, tmp_path
):
    env = _worker_env(
        CHANNEL_LAYER=None, POLL_INTERVAL=60, HEARTBEAT_INTERVAL=0.3, LEASE_SECONDS=60
    )
    _cancel_running(worker_processes, tmp_path, env)


@pytest.mark.subprocess
def test_a_completion_recorded_before_the_cancel_stays_completed(worker_processes):
    handle = add.enqueue(1, 2)
    worker_processes.start()
    assert handle.wait(timeout=30) == 3
    assert cancel(handle.id) is False
    assert handle.refresh().status == "completed" and handle.result == 3


# -- the statements honour cancel_requested ------------------------------------------------------


def _claimed_and_cancelled(**options: Any):
    handle = add.using(**options).enqueue(1, 2)
    now = timezone.now()
    (claimed,) = Job.objects.claim(
        queue=None, limit=1, worker="w", now=now, lease_until=now + timedelta(seconds=60)
    )
    assert cancel(handle.id) is True
    return handle, claimed, now


def test_a_cancel_landing_between_return_and_completion_wins():
    handle, claimed, now = _claimed_and_cancelled()
    jobs = Job.objects.all()
    mine = jobs.complete_with_results([claimed.fence], {claimed.id: 3}, now=now, expires_at=now)
    assert mine.cancelled == {claimed.id}
    assert handle.refresh().status == "cancelled"
    assert not JobResult.objects.filter(result=3).exists()


def test_a_cancel_requested_run_that_fails_ends_cancelled_not_queued():
    handle, claimed, now = _claimed_and_cancelled()
    retried = Job.objects.retry(*claimed.fence, run_after=now, error="boom", now=now)
    assert retried == ("cancelled", False)
    assert handle.refresh().status == "cancelled"


def test_a_cancel_requested_run_is_never_dead_lettered(run_worker):
    handle, claimed, now = _claimed_and_cancelled(max_attempts=1)
    assert Job.objects.dead_letter(claimed, "boom", "", now=now) is None
    assert not DeadLetter.objects.exists()
    # Its lease expires: the reaper ends it cancelled (never requeued, nor a dead letter).
    Job.objects.filter(pk=claimed.id).update(lease_expires_at=now - timedelta(seconds=1))
    run_worker()
    assert handle.refresh().status == "cancelled"
    assert not DeadLetter.objects.exists()


def test_an_expired_cancel_requested_retry_ends_cancelled(run_worker):
    handle, claimed, now = _claimed_and_cancelled(max_attempts=3)
    Job.objects.filter(pk=claimed.id).update(lease_expires_at=now - timedelta(seconds=1))
    run_worker()
    row = _row(handle.id)
    assert (row.status, row.attempts) == ("cancelled", 1)


def test_job_finished_and_the_log_line_say_cancelled(run_worker, caplog, tmp_path):
    marker = tmp_path / "m"
    handle = until_cancelled.enqueue(str(marker), 30)
    finished: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        finished.append(kwargs)

    signals.job_finished.connect(receiver)
    try:
        thread = threading.Thread(target=run_worker, daemon=True)
        thread.start()
        wait_until(marker.exists)
        assert cancel(handle.id) is True
        thread.join(30)
        assert not thread.is_alive()
    finally:
        signals.job_finished.disconnect(receiver)
    assert handle.refresh().status == "cancelled"
    assert [(f["job_id"], f["ok"], f["cancelled"]) for f in finished] == [(handle.id, False, True)]
    assert any("outcome=cancelled" in r.getMessage() for r in caplog.records)


# -- the cancel channel --------------------------------------------------------------------------

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def test_cancel_messages_reach_the_listener_and_malformed_ones_are_ignored(settings, caplog):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "default"}
    notifier = hub()
    heard: list[str] = []
    notifier.listen_for_cancels("host:1:abc", heard.append)
    channel = cancel_channel("host:1:abc")
    forged = [
        {"type": "jobqueue.cancel"},
        {"type": "jobqueue.cancel", "job_id": 5},
        {"type": "jobqueue.cancel", "job_id": ""},
        {"type": "jobqueue.work", "job_id": "j"},
        {"job_id": "j"},
    ]
    for message in forged:
        notifier.submit(lambda layer, m=message: layer.send(channel, m)).result(5)
    notifier.request_cancel("host:1:abc", "job-1")
    notifier.request_cancel("host:2:def", "job-2")  # another worker's channel
    wait_until(lambda: heard)
    assert heard == ["job-1"]
    ignored = [r for r in caplog.records if "not a well-formed cancel message" in r.getMessage()]
    assert ignored and ignored[0].name == "django_jobqueue.notifications"


def test_a_forged_cancel_message_only_makes_the_worker_read_the_flags(
    settings, run_worker, tmp_path
):
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "CHANNEL_LAYER": "default",
        "LEASE_SECONDS": 300,
        "HEARTBEAT_INTERVAL": 300,
    }
    marker = tmp_path / "m"
    handle = until_cancelled.enqueue(str(marker), 30)
    thread = threading.Thread(target=run_worker, kwargs={"name": "w-forged"}, daemon=True)
    thread.start()
    wait_until(marker.exists)
    lease = _row(handle.id).lease_expires_at
    notifier = hub()
    message = cancel_message(handle.id)
    notifier.submit(lambda layer: layer.send(cancel_channel("w-forged"), message)).result(5)
    # The message made the worker renew its leases at once (its heartbeat is 300s away)...
    wait_until(lambda: _row(handle.id).lease_expires_at > lease)
    # ...which read no cancel_requested flag: the job goes on.
    assert marker.read_text() == "started"
    assert _row(handle.id).status == "running"
    assert cancel(handle.id) is True
    thread.join(30)
    assert not thread.is_alive()
    assert marker.read_text() == "saw cancel_requested"
    assert handle.refresh().status == "cancelled"
