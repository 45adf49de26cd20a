"""django_jobqueue.stats: counts by queue and status (finished jobs capped), the oldest
waiting job, jobs finished per minute, and the summary the admin overview shows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_jobqueue import stats
from django_jobqueue.models import Job
from tests.testapp.jobs import add, other_queue

pytestmark = pytest.mark.django_db


def finish(handle, status: str = "completed", at=None) -> None:
    at = at or timezone.now()
    Job.objects.filter(job_id=handle.id).update(
        status=status, started_at=at, finished_at=at, expires_at=at + timedelta(hours=1)
    )


def test_job_counts_by_queue_and_status_in_one_query():
    for handle in add.enqueue_many([(i, i) for i in range(3)]):
        finish(handle)
    finish(add.enqueue(0, 0), "failed")
    add.enqueue(1, 1)
    Job.objects.filter(job_id=other_queue.enqueue(1).id).update(status="running")
    with CaptureQueriesContext(connection) as queries:
        counts = stats.job_counts()
    assert len(queries) == 1
    assert counts == [
        stats.QueueCounts("default", {"completed": 3, "failed": 1, "queued": 1}),
        stats.QueueCounts("other", {"running": 1}),
    ]
    assert counts[0].count("running") == 0


def test_finished_jobs_are_counted_up_to_the_cap_active_ones_exactly():
    for handle in add.enqueue_many([(i, i) for i in range(5)]):
        finish(handle)
    add.enqueue_many([(i, i) for i in range(4)])
    [default] = stats.job_counts(cap=2)
    assert default.capped
    assert default.count("queued") == 4, "active jobs: exact"
    assert default.count("completed") == 3, "finished: the cap and one more, then it stops"
    [exact] = stats.job_counts(cap=5)
    assert not exact.capped and exact.count("completed") == 5


def test_oldest_waiting_counts_ready_jobs_only():
    now = timezone.now()
    first = add.enqueue(1, 1)
    Job.objects.filter(job_id=first.id).update(enqueued_at=now - timedelta(minutes=5))
    add.using(run_after=timedelta(hours=1)).enqueue(2, 2)  # delayed: not waiting yet
    backed_off = other_queue.enqueue(1)
    Job.objects.filter(job_id=backed_off.id).update(
        enqueued_at=now - timedelta(hours=1), run_after=now - timedelta(seconds=30)
    )
    waiting = stats.oldest_waiting(now)
    assert waiting == {
        "default": now - timedelta(minutes=5),
        "other": now - timedelta(seconds=30),
    }
    assert stats.waited_seconds(waiting["other"], now) == 30.0
    assert stats.waited_seconds(None, now) is None
    assert stats.waited_seconds(now + timedelta(seconds=1), now) == 0.0


def test_finished_per_minute_over_a_window():
    now = timezone.now().replace(second=30)
    finish(add.enqueue(1, 1), at=now - timedelta(minutes=2))
    finish(add.enqueue(2, 2), "failed", at=now - timedelta(minutes=2))
    finish(add.enqueue(3, 3), at=now)
    finish(add.enqueue(4, 4), at=now - timedelta(minutes=20))  # outside a 10-minute window
    series = stats.finished_per_minute(now, minutes=10, queues=["empty"])
    default = series["default"]
    assert len(default.per_minute) == 10
    assert default.per_minute[-1] == stats.Minute(1, 0)
    assert default.per_minute[-3] == stats.Minute(1, 1)
    assert (default.total, default.peak) == (3, 2)
    assert default.start == now.replace(second=0, microsecond=0) - timedelta(minutes=9)
    assert series["empty"].total == 0


def test_summary_has_every_queue_and_a_total():
    now = timezone.now()
    finish(add.enqueue(1, 1))
    other_queue.enqueue(1)
    summary = stats.summary(now, queues=["idle"], minutes=5)
    assert [row.queue for row in summary.queues] == ["default", "idle", "other"]
    assert summary.total.counts == {"completed": 1, "queued": 1}
    assert summary.total.throughput is not None and summary.total.throughput.total == 1
    assert summary.total.waiting_since is not None
    idle = summary.queues[1]
    assert idle.counts == {} and idle.throughput is not None and idle.throughput.total == 0
