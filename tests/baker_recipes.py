"""model-bakery recipes for the rows tests write directly (``baker.make_recipe(
"tests.queued_job", job_id="x")``): a job in each state and a dead letter, with the fields a
worker reads filled in so that only what a test is about has to be spelled out."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from model_bakery.recipe import Recipe, foreign_key

from django_jobqueue.models import DeadLetter, Job, JobResult
from tests.testapp.jobs import add


def _past(seconds: float = 1.0):
    return lambda: timezone.now() - timedelta(seconds=seconds)


#: A job ready to run: a registered name, the default queue, three attempts, a minute of TTL.
queued_job = Recipe(
    Job,
    name=add.name,
    queue="default",
    args=[1, 2],
    kwargs={},
    status="queued",
    group=None,
    run_after=None,
    attempts=0,
    max_attempts=3,
    result_ttl=60,
    limit_key=None,
    time_limit=None,
)

#: A job a worker holds, its lease still good.
running_job = queued_job.extend(
    status="running",
    attempts=1,
    worker="w",
    started_at=_past(),
    lease_expires_at=lambda: timezone.now() + timedelta(minutes=5),
)

#: A job whose worker died: the lease ran out a second ago.
expired_lease_job = running_job.extend(worker="dead-worker", lease_expires_at=_past())

#: A job that completed, its result kept until ``expires_at``.
completed_job = queued_job.extend(
    status="completed",
    attempts=1,
    started_at=_past(2),
    finished_at=_past(),
    expires_at=lambda: timezone.now() + timedelta(minutes=1),
)

#: A job that failed its last attempt, its failure kept until ``expires_at``.
failed_job = completed_job.extend(status="failed", attempts=3, last_error="RuntimeError: boom")

#: The result row of a completed job: ``make_recipe("tests.job_result")`` makes both.
job_result = Recipe(JobResult, job=foreign_key(completed_job), result=3)

#: A dead letter of a job that failed all of its attempts.
dead_letter = Recipe(
    DeadLetter,
    name=add.name,
    queue="default",
    args=[1, 2],
    kwargs={},
    group=None,
    limit_key=None,
    time_limit=None,
    max_attempts=3,
    attempts=3,
    result_ttl=60,
    error="RuntimeError: boom",
    traceback="Traceback (most recent call last):\n  ...\nRuntimeError: boom\n",
    enqueued_at=_past(10),
)
