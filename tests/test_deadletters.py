"""Dead letters outside the admin: requeueing through django_jobqueue.deadletters."""

from __future__ import annotations

import pytest

from django_jobqueue import signals
from django_jobqueue.deadletters import requeue
from django_jobqueue.models import DeadLetter, Job
from tests.testapp.jobs import always_fails

pytestmark = pytest.mark.django_db


def test_a_raising_job_enqueued_receiver_does_not_undo_or_break_a_requeue(run_worker, caplog):
    """The requeue is written when job_enqueued is sent: a receiver's error is logged, never
    raised (it used to turn the admin's committed requeue into a 500)."""
    handle = always_fails.using(max_attempts=1).enqueue("boom")
    run_worker()
    letter = DeadLetter.objects.get(job_id=handle.id)

    def broken(**kwargs):
        raise ValueError("receiver bug")

    signals.job_enqueued.connect(broken)
    try:
        assert requeue([letter]) == 1
    finally:
        signals.job_enqueued.disconnect(broken)
    assert not DeadLetter.objects.exists()
    assert Job.objects.get(job_id=handle.id).status == "queued"
    assert "receiver bug" in caplog.text


def test_requeue_sends_job_enqueued_with_a_handle_to_the_new_run(run_worker):
    handle = always_fails.using(max_attempts=1).enqueue("boom")
    run_worker()
    seen = []

    def receiver(handle, **kwargs):
        seen.append((handle.id, handle.status, handle.created))

    signals.job_enqueued.connect(receiver)
    try:
        requeue(DeadLetter.objects.all())
    finally:
        signals.job_enqueued.disconnect(receiver)
    assert seen == [(handle.id, "queued", True)]
