"""Live workers: each worker's heartbeat row, its content, its deletion on a clean exit, and
the ageing out of a killed worker's row; ``stats.live_workers()`` and the admin list."""

from __future__ import annotations

import os
import signal
import socket
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobqueue import stats
from django_jobqueue.models import WorkerHeartbeat
from django_jobqueue.worker import Worker
from tests.conftest import wait_until
from tests.testapp.jobs import add, sleep_then_record


def test_a_worker_records_its_heartbeat_and_deletes_it_on_a_clean_exit(transactional_db, tmp_path):
    worker = Worker(["default", "other"], concurrency=3, name="hb-worker")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        row = wait_until(lambda: WorkerHeartbeat.objects.filter(name="hb-worker").first())
        assert (row.host, row.pid, row.queues, row.concurrency) == (
            socket.gethostname(),
            os.getpid(),
            ["default", "other"],
            3,
        )
        assert row.scheduling is True
        assert row.started_at <= row.last_seen <= timezone.now()
        first_seen = row.last_seen
        marker = tmp_path / "started"
        add.enqueue(1, 2)
        sleep_then_record.enqueue("hb", 1.5, str(marker))
        # The heartbeat timer (a third of LEASE_SECONDS = 2 s in the tests) refreshes it.
        row = wait_until(
            lambda: WorkerHeartbeat.objects.filter(
                name="hb-worker", jobs_running=1, jobs_done__gte=1, last_seen__gt=first_seen
            ).first()
        )
        (live,) = stats.live_workers()
        assert (live.name, live.queues, live.jobs_running) == ("hb-worker", ["default", "other"], 1)
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert not WorkerHeartbeat.objects.exists()


def test_live_workers_leaves_out_rows_older_than_the_lease(db):
    now = timezone.now()
    common = {"host": "h", "pid": 1, "concurrency": 1, "scheduling": True, "started_at": now}
    WorkerHeartbeat.objects.create(name="fresh", last_seen=now, **common)
    WorkerHeartbeat.objects.create(name="dead", last_seen=now - timedelta(seconds=3), **common)
    assert [worker.name for worker in stats.live_workers(now=now)] == ["fresh"]


@pytest.mark.subprocess
def test_a_killed_workers_heartbeat_ages_out(worker_processes):
    survivor = worker_processes.start("--name", "survivor")
    victim = worker_processes.start("--name", "victim")
    wait_until(lambda: WorkerHeartbeat.objects.filter(name__in=["survivor", "victim"]).count() == 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    # Not refreshed for LEASE_SECONDS (2 s here): the survivor's heartbeat deletes it.
    wait_until(lambda: not WorkerHeartbeat.objects.filter(name="victim").exists(), timeout=15)
    assert WorkerHeartbeat.objects.filter(name="survivor").exists()
    assert [worker.name for worker in stats.live_workers()] == ["survivor"]
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=20) == 0
    assert not WorkerHeartbeat.objects.exists()  # a clean exit deletes its own row


@pytest.mark.subprocess
def test_a_no_schedule_worker_says_so_in_its_heartbeat(worker_processes):
    worker_processes.start("--no-schedule", "--name", "quiet")
    row = wait_until(lambda: WorkerHeartbeat.objects.filter(name="quiet").first(), timeout=20)
    assert row.scheduling is False


def test_admin_lists_live_workers_read_only(admin_client):
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        name="w1", host="box", pid=7, queues=None, concurrency=2, scheduling=True,
        started_at=now, last_seen=now, jobs_running=1, jobs_done=42,
    )  # fmt: skip
    html = admin_client.get("/admin/django_jobqueue/workerheartbeat/").content.decode()
    assert "w1" in html and "box" in html and "42" in html and "all" in html
    assert admin_client.get("/admin/django_jobqueue/workerheartbeat/add/").status_code == 403
    page = admin_client.get("/admin/django_jobqueue/workerheartbeat/w1/change/")
    assert page.status_code == 200 and "Save" not in page.content.decode()
