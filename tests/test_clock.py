"""A worker whose host clock is off decides leases on the database's clock.

The skewed workers are real ``runjobworker`` processes whose wall clock is shifted by
``tests/chaos/skew/sitecustomize.py`` (``DJQ_CLOCK_SKEW``); monotonic time is left alone.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from django_jobqueue import clock
from django_jobqueue.models import Job, Schedule
from django_jobqueue.periodic import Scheduler, ScheduleSpec
from tests.conftest import POSTGRES, ROOT, wait_until
from tests.testapp.jobs import sleep_then_record
from tests.testapp.models import Execution

SKEW = Path(__file__).resolve().parent / "chaos" / "skew"

pytestmark = [pytest.mark.django_db(transaction=True)]


def _skewed(seconds: int) -> dict[str, str]:
    return {"DJQ_CLOCK_SKEW": str(seconds), "PYTHONPATH": f"{SKEW}{os.pathsep}{ROOT}"}


def test_a_healthy_clock_has_no_offset():
    assert clock.sync(connection.alias) == timedelta(0)
    now = clock.now()
    assert abs(now - clock.now()) < timedelta(seconds=1)


@pytest.mark.subprocess
@pytest.mark.skipif(not POSTGRES, reason="SQLite shares the process's (faked) clock")
@pytest.mark.parametrize(
    ("holder", "watcher"),
    [({}, _skewed(120)), (_skewed(-120), {})],
    ids=["watcher-2-min-ahead", "holder-2-min-behind"],
)
def test_a_skewed_worker_never_takes_over_a_live_lease(worker_processes, tmp_path, holder, watcher):
    """One worker runs a 10 s job (the lease is 2 s, renewed); a second worker, which reaps
    expired leases, watches. Decided on the hosts' own clocks, a watcher 2 minutes ahead,
    or a holder 2 minutes behind, sees the lease as long expired and runs the job again."""
    marker = tmp_path / "started"
    handle = sleep_then_record.enqueue("skew", 10, str(marker))
    first = worker_processes.start(env=holder)
    wait_until(marker.exists, timeout=60)
    second = worker_processes.start(env=watcher)
    skewed = first if holder else second
    # The skewed worker measured its offset (its first pass) and said so.
    wait_until(lambda: "clock is 120." in worker_processes.log(skewed), timeout=60)
    # ... while the job still ran: the watcher's reaping pass follows the measurement.
    assert Job.objects.get(job_id=handle.id).status == "running"
    wait_until(
        lambda: Job.objects.get(job_id=handle.id).status == "completed",
        timeout=60,
    )
    row = Job.objects.get(job_id=handle.id)
    assert row.attempts == 1, row.last_error
    assert Execution.objects.filter(tag="skew").count() == 1
    assert "ahead of" in worker_processes.log(skewed) or "behind" in worker_processes.log(skewed)


@pytest.mark.skipif(not POSTGRES, reason="SQLite shares the process's clock")
def test_a_host_two_minutes_ahead_enqueues_no_tick_before_its_time(monkeypatch):
    """The scheduler of a worker whose host clock is 2 minutes fast: without the
    database's clock it enqueued the tick two minutes ahead at once."""
    real_now = timezone.now
    # The host's clock is the boundary faked here; the database's is real.
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(minutes=2))
    monkeypatch.setattr(clock, "_offset", clock.offset())
    assert abs(clock.sync(connection.alias) + timedelta(minutes=2)) < timedelta(seconds=1)
    spec = ScheduleSpec("every-minute", "tests.testapp.jobs.record", "* * * * *", ["t"])
    Schedule.objects.create(
        name=spec.name, job=spec.job, cron=spec.cron, since=real_now() - timedelta(minutes=10)
    )
    Scheduler([spec], connection.alias).run()
    ticks = [
        datetime.fromisoformat(job_id.split(":", 2)[2].replace("Z", "+00:00"))
        for job_id in Job.objects.values_list("job_id", flat=True)
    ]
    assert len(ticks) == 1
    assert ticks[0] <= real_now() < ticks[0] + timedelta(minutes=1)


def test_a_measurement_with_a_slow_round_trip_is_discarded(monkeypatch):
    """A pause or a stalled network during the measurement would put its error at half
    the round trip: such a measurement keeps the previous offset."""
    monkeypatch.setattr(clock, "_offset", timedelta(0))

    def stalled(using):  # the database answers, but the answer took a second to arrive
        answer = timezone.now() + timedelta(seconds=100)
        time.sleep(clock.MAX_ROUND_TRIP * 2)
        return answer

    monkeypatch.setattr(clock, "_database_time", stalled)
    assert clock.sync(connection.alias) == timedelta(0)
    assert clock.offset() == timedelta(0)
