"""Pausing and resuming a queue: the claim, the worker (in process and as a subprocess), the
API, ``manage.py jobqueue pause|resume|status|health``, the metrics and the admin."""

from __future__ import annotations

import json
import time
from io import StringIO

import pytest
from django.contrib.admin.models import ADDITION, DELETION, LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_jobqueue import InvalidJobError, pause_queue, resume_queue
from django_jobqueue.models import Job, QueuePause
from django_jobqueue.worker import Worker
from django_jobqueue.worker.steps import release_paused
from tests.conftest import requires_postgres, wait_until
from tests.test_admin import staff
from tests.test_telemetry import scrape
from tests.testapp.jobs import noop, other_queue, record

pytestmark = pytest.mark.django_db

OVERVIEW = "/admin/django_jobqueue/job/overview/"


def _claim(queue=None, limit=10):
    now = timezone.now()
    return Job.objects.claim(queue=queue, limit=limit, worker="w", now=now, lease_until=now)


def _statuses(handles):
    return [h.refresh().status for h in handles]


# -- the claim -------------------------------------------------------------------------------


def test_the_claim_skips_paused_queues_and_takes_them_again_once_resumed():
    held = other_queue.enqueue_many([(i,) for i in range(3)])
    free = noop.enqueue()
    pause_queue("other", "provider outage", "alice")
    assert [job.job_id for job in _claim()] == [free.id]
    assert _claim(queue="other") == []
    assert _statuses(held) == ["queued"] * 3
    assert resume_queue("other") is True
    assert sorted(job.job_id for job in _claim()) == sorted(h.id for h in held)


@requires_postgres
def test_the_claim_keeps_its_index_plan_with_a_pause_row():
    """The pause is a filter over the claim index, never a join the planner may reorder."""
    from tests.test_querysets import _backlog

    _backlog()
    pause_queue("other")
    plan = Job.objects.explain_claim()
    assert "djq_claim_any" in plan, plan
    assert "Seq Scan on django_jobqueue_job c" not in plan, plan
    assert "Sort" not in plan.split("SubPlan")[0], plan
    assert "djq_claim_queue" in Job.objects.explain_claim(queue="default")


def test_a_worker_hands_back_the_jobs_it_claimed_ahead_once_their_queue_is_paused(settings):
    """Jobs prefetched before the pause never start: the buffer is checked against the
    pauses at most once a second while it holds jobs (here: at once, the first check), and
    not again before the bound."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 5}
    held = other_queue.enqueue_many([(i,) for i in range(2)])
    free = noop.enqueue()
    worker = Worker(concurrency=1)
    claimer = worker._claimer
    assert claimer.claim(10) == 3
    pause_queue("other")
    now = time.monotonic()
    release_paused(claimer, now)
    assert [job.job_id for job in claimer.buffer] == [free.id]
    rows = Job.objects.filter(job_id__in=[h.id for h in held])
    assert {(row.status, row.attempts, row.worker) for row in rows} == {("queued", 0, "")}
    pause_queue("default")
    with CaptureQueriesContext(connection) as queries:
        release_paused(claimer, now + 0.5)  # not due: no statement, nothing handed back
    assert not queries.captured_queries and len(claimer.buffer) == 1
    release_paused(claimer, now + 1.0)
    assert not claimer.buffer


@pytest.mark.django_db(transaction=True)
def test_the_loop_hands_back_held_jobs_of_a_paused_queue_before_starting_them():
    """A worker holding claimed jobs (its prefetch) when their queue is paused starts none."""
    held = other_queue.enqueue_many([(i,) for i in range(3)])
    worker = Worker(concurrency=1, burst=True, wait_for_retries=False)
    assert worker._claimer.claim(10) == 3
    pause_queue("other")
    worker.run()
    assert worker.processed == 0
    assert _statuses(held) == ["queued"] * 3


@pytest.mark.django_db(transaction=True)
def test_a_burst_worker_runs_every_queue_but_the_paused_one(run_worker):
    held = other_queue.enqueue_many([(i,) for i in range(3)])
    done = record.enqueue("free")
    pause_queue("other")
    worker = run_worker()
    assert worker.processed == 1
    assert done.refresh().status == "completed"
    assert _statuses(held) == ["queued"] * 3
    resume_queue("other")
    assert run_worker().processed == 3
    assert _statuses(held) == ["completed"] * 3


# -- real worker processes -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_leaves_a_paused_queue_queued_and_runs_it_once_resumed(
    worker_processes,
):
    pause_queue("other", "maintenance")
    held = other_queue.enqueue_many([(i,) for i in range(5)])
    free = record.enqueue_many([(f"free-{i}",) for i in range(5)])
    proc = worker_processes.start("--concurrency", "2")
    wait_until(lambda: _statuses(free) == ["completed"] * 5, timeout=30)
    assert _statuses(held) == ["queued"] * 5, worker_processes.log(proc)
    resume_queue("other")
    wait_until(lambda: _statuses(held) == ["completed"] * 5, timeout=30)


@pytest.mark.django_db(transaction=True)
def test_a_pause_lands_on_an_idle_worker_within_the_bound(worker_processes, settings):
    """The worker is idle, waiting for work; the queue is paused; jobs enqueued to it after
    that stay queued while a job of another queue, enqueued after them, runs. The claim reads
    the pause itself, so the bound (2 s) holds with and without a channel layer."""
    from django_jobqueue.models import WorkerHeartbeat

    proc = worker_processes.start()
    wait_until(lambda: WorkerHeartbeat.objects.exists(), timeout=30)
    warm = record.enqueue("warm")  # the worker is up and claiming
    wait_until(lambda: warm.refresh().status == "completed", timeout=30)
    pause_queue("other")
    held = other_queue.enqueue(1)
    after = record.enqueue("after the pause")
    wait_until(lambda: after.refresh().status == "completed", timeout=30)
    assert held.refresh().status == "queued", worker_processes.log(proc)
    resume_queue("other")
    wait_until(lambda: held.refresh().status == "completed", timeout=30)


# -- the API ---------------------------------------------------------------------------------


def test_pausing_records_who_why_and_when_and_pausing_again_replaces_them():
    first = pause_queue("emails", "provider outage", "alice")
    assert (first.queue, first.reason, first.paused_by) == ("emails", "provider outage", "alice")
    again = pause_queue("emails", "still down", "bob")
    assert QueuePause.objects.get().reason == "still down"
    assert again.paused_at >= first.paused_at


@pytest.mark.parametrize("queue", ["bad queue", "", "x" * 101, 3])
def test_a_bad_queue_name_is_refused_and_nothing_is_written(queue):
    with pytest.raises(InvalidJobError, match="queue"):
        pause_queue(queue)
    with pytest.raises(InvalidJobError, match="queue"):
        resume_queue(queue)
    assert not QueuePause.objects.exists()


def test_resuming_a_queue_that_is_not_paused_is_false():
    assert resume_queue("emails") is False


def test_enqueue_keeps_working_on_a_paused_queue():
    pause_queue("other")
    handle = other_queue.enqueue(1)
    assert handle.refresh().status == "queued"


async def test_the_async_twins():
    from django_jobqueue import apause_queue, aresume_queue

    pause = await apause_queue("emails", "why", "me")
    assert pause.queue == "emails"
    assert await aresume_queue("emails") is True


# -- the command -----------------------------------------------------------------------------


def _call(*args: str) -> str:
    out = StringIO()
    call_command("jobqueue", *args, stdout=out)
    return out.getvalue()


def test_the_command_pauses_says_when_a_queue_is_unknown_and_resumes():
    text = _call("pause", "partner", "--reason", "provider outage", "--by", "ops")
    assert "paused queue 'partner'" in text and "by ops" in text
    assert "no registered job names queue 'partner' and none of its jobs is queued" in text
    assert "(queues exist by use, so pausing it is allowed)" in text
    assert QueuePause.objects.get().reason == "provider outage"
    assert "note" not in _call("pause", "default")  # the default queue
    assert "note" not in _call("pause", "other")  # a registered job's queue
    noop.using(queue="adhoc").enqueue()
    assert "note" not in _call("pause", "adhoc")  # a queue with a queued job
    assert _call("resume", "partner") == "resumed queue 'partner'\n"
    assert "is not paused: nothing to resume" in _call("resume", "partner")


def test_the_command_refuses_a_bad_queue_name_and_writes_nothing():
    with pytest.raises(CommandError, match="not a valid queue name"):
        call_command("jobqueue", "pause", "bad queue")
    assert not QueuePause.objects.exists()


def test_status_shows_the_pause_with_its_reason_who_and_when():
    pause_queue("emails", "provider outage", "alice")
    noop.enqueue()
    text = _call("status")
    assert "emails (paused)" in text
    assert "paused: emails since" in text and "by alice: provider outage" in text
    report = json.loads(_call("status", "--json"))
    (entry,) = [q for q in report["queues"] if q["queue"] == "emails"]
    assert entry["paused"] is True
    assert [q["paused"] for q in report["queues"] if q["queue"] == "default"] == [False]
    (paused,) = report["paused"]
    assert (paused["queue"], paused["reason"], paused["paused_by"]) == (
        "emails",
        "provider outage",
        "alice",
    )


def test_health_does_not_call_a_paused_queue_backed_up_and_names_it():
    handle = other_queue.enqueue(1)
    Job.objects.filter(job_id=handle.id).update(
        enqueued_at=timezone.now() - timezone.timedelta(hours=1)
    )
    with pytest.raises(CommandError, match="backed up"):
        call_command("jobqueue", "health", "--min-workers", "0", stdout=StringIO())
    pause_queue("other", "on purpose", "alice")
    text = _call("health", "--min-workers", "0")
    assert text.startswith("healthy")
    assert "paused: other since" in text and "on purpose" in text


# -- metrics ---------------------------------------------------------------------------------


def test_the_metrics_show_each_paused_queue(client):
    noop.enqueue()
    pause_queue("emails", "provider outage", "alice")
    samples = scrape(client)
    assert samples[("jobqueue_queue_paused", (("queue", "emails"),))] == 1
    assert samples[("jobqueue_queue_paused", (("queue", "default"),))] == 0
    (info,) = [labels for name, labels in samples if name == "jobqueue_queue_paused_info"]
    assert dict(info)["reason"] == "provider outage"
    assert dict(info)["paused_by"] == "alice"


# -- the admin -------------------------------------------------------------------------------


def test_the_overview_pauses_and_resumes_a_queue_and_records_it_in_the_history(admin_client):
    noop.enqueue()
    page = admin_client.get(OVERVIEW).content.decode()
    assert 'name="action" value="pause"' in page and "csrfmiddlewaretoken" in page
    response = admin_client.post(
        OVERVIEW, {"action": "pause", "queue": "default", "reason": "deploy"}
    )
    assert response.status_code == 302
    pause = QueuePause.objects.get()
    assert (pause.queue, pause.reason, pause.paused_by) == ("default", "deploy", "admin")
    entry = LogEntry.objects.get(action_flag=ADDITION)
    assert entry.user.username == "admin" and "deploy" in entry.change_message
    page = admin_client.get(OVERVIEW).content.decode()
    assert "paused by admin" in page and ": deploy" in page
    assert 'name="action" value="resume"' in page
    admin_client.post(OVERVIEW, {"action": "resume", "queue": "default"})
    assert not QueuePause.objects.exists()
    assert LogEntry.objects.get(action_flag=DELETION).user.username == "admin"


def test_the_overview_lists_a_paused_queue_without_jobs(admin_client):
    pause_queue("emails", "provider outage", "alice")
    page = admin_client.get(OVERVIEW).content.decode()
    assert 'data-queue="emails"' in page and "provider outage" in page


def test_bad_input_on_the_overview_changes_nothing_and_says_why(admin_client):
    response = admin_client.post(OVERVIEW, {"action": "pause", "queue": "bad queue"}, follow=True)
    assert "Nothing changed" in response.content.decode()
    response = admin_client.post(OVERVIEW, {"action": "resume", "queue": "emails"}, follow=True)
    assert "is not paused" in response.content.decode()
    assert not QueuePause.objects.exists()
    assert not LogEntry.objects.exists()


def test_only_users_who_may_change_jobs_pause_and_the_post_needs_csrf(client):
    noop.enqueue()
    client.force_login(staff("view_job"))
    assert 'value="pause"' not in client.get(OVERVIEW).content.decode()
    assert client.post(OVERVIEW, {"action": "pause", "queue": "default"}).status_code == 403
    assert not QueuePause.objects.exists()
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff("view_job", "change_job", username="changer"))
    assert 'value="pause"' in strict.get(OVERVIEW).content.decode()
    assert strict.post(OVERVIEW, {"action": "pause", "queue": "default"}).status_code == 403
    assert not QueuePause.objects.exists()


def test_the_overview_url_is_the_admins():
    assert reverse("admin:django_jobqueue_job_overview") == OVERVIEW
    assert connection.vendor in ("sqlite", "postgresql")
