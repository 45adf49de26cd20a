"""Several limit keys on one job (``limit=[...]``): every key held at once, all or nothing,
in the database and in Redis (``LIMITS_CACHE``); bad lists refused at the call site."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobqueue import job
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import Job, LimitStart
from django_jobqueue.querysets.limited import Hold
from django_jobqueue.worker.limiter import make_limiter
from tests.conftest import wait_until
from tests.test_limits import HOLDERS, _flush_limits_cache, _limits, max_overlap
from tests.testapp.jobs import add, timed
from tests.testapp.models import Interval


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_job_runs_only_when_every_key_allows_and_holds_none_meanwhile(
    settings, run_worker, cache
):
    """Key "b" is full elsewhere: the ["a", "b"] job waits, takes nothing of "a" (no slot,
    no start), and a job of "a" alone runs."""
    _limits(settings, {"a": {"concurrency": 1, "rate": "10/m"}, "b": {"concurrency": 1}}, cache)
    _flush_limits_cache(cache)
    holder = timed.using(limit="b").enqueue("held elsewhere")
    now = timezone.now()
    elsewhere = make_limiter("default", "elsewhere")
    taken = elsewhere.claim(
        "b",
        [Hold("b", 1, None)],
        queue=None,
        limit=1,
        now=now,
        lease_until=now + timedelta(seconds=60),
    )
    assert [claimed.job_id for claimed in taken] == [holder.id]
    both = timed.using(limit=["b", "a"], priority=9).enqueue("both")
    alone = timed.using(limit="a").enqueue("a alone")
    worker = run_worker(concurrency=2)
    assert worker.processed == 1
    assert Job.objects.get(job_id=alone.id).status == "completed"
    row = Job.objects.get(job_id=both.id)
    assert (row.status, row.attempts, row.limit_key) == ("queued", 0, "a\nb")
    if cache is None:
        assert LimitStart.objects.filter(key="a").count() == 1  # the job of "a" alone
    elsewhere.close()


@pytest.mark.django_db
def test_a_bad_list_of_keys_is_refused_at_the_call_site_and_writes_nothing(settings):
    _limits(settings, {"a": {"concurrency": 1}, "tenant:*": {"concurrency": 2}})
    with pytest.raises(InvalidJobError, match="'a' more than once: name each key once"):
        add.using(limit=["a", "a"]).enqueue(1, 2)
    with pytest.raises(InvalidJobError, match="limit 'nope' has no entry in JOBQUEUE"):
        add.using(limit=["a", "nope"]).enqueue(1, 2)
    with pytest.raises(InvalidJobError, match=r"limit=\[\] names no key"):
        add.using(limit=[]).enqueue(1, 2)
    with pytest.raises(InvalidJobError, match="at most 1000 characters in all"):
        add.using(limit=[f"tenant:{i:0190}" for i in range(6)]).enqueue(1, 2)
    with pytest.raises(InvalidJobError, match="more than once"):

        @job(name="tests.twice", limit=["tenant:1", "tenant:1"])
        def twice() -> None: ...

    assert not Job.objects.exists()
    handle = add.using(limit=("tenant:7", "a")).enqueue(1, 2)
    assert Job.objects.get(job_id=handle.id).limit_key == "a\ntenant:7"


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_two_workers_never_run_more_than_either_key_allows(settings, worker_processes, cache):
    """Jobs of ["a", "b"], of "a" alone and of "b" alone, on two workers of four threads:
    at no moment more than 3 jobs with "a" or more than 2 with "b" run."""
    limits = {"a": {"concurrency": 3}, "b": {"concurrency": 2}}
    env = {"DJQ_JOBQUEUE": json.dumps(_limits(settings, limits, cache))}
    _flush_limits_cache(cache)
    workers = [worker_processes.start("--concurrency", "4", env=env) for _ in range(2)]
    for proc in workers:  # both claim from the start: the race is real
        wait_until(lambda proc=proc: "worker started" in worker_processes.log(proc), 30)
    timed.using(limit=["a", "b"]).enqueue_many([(f"ab{i}", 0.1) for i in range(12)])
    timed.using(limit="a").enqueue_many([(f"a{i}", 0.1) for i in range(8)])
    timed.using(limit="b").enqueue_many([(f"b{i}", 0.1) for i in range(8)])
    wait_until(lambda: Job.objects.filter(status="completed").count() == 28, timeout=90)
    rows = list(Interval.objects.all())
    with_a = [row for row in rows if row.tag.startswith("a")]
    with_b = [row for row in rows if row.tag.startswith(("ab", "b"))]
    assert len(with_a) == 20 and len(with_b) == 20
    assert max_overlap(with_a) <= 3, sorted((r.started, r.ended, r.tag) for r in with_a)
    assert max_overlap(with_b) <= 2, sorted((r.started, r.ended, r.tag) for r in with_b)


# -- queue-wide limits: JOBQUEUE["QUEUES"] --------------------------------------------------


def _queues(settings, queues: dict, cache: str | None = None) -> dict:
    settings.JOBQUEUE = {**settings.JOBQUEUE, "QUEUES": queues, "LIMITS_CACHE": cache}
    return {"QUEUES": queues, "LIMITS_CACHE": cache}


@pytest.mark.django_db(transaction=True)
def test_a_queue_with_limits_gives_its_jobs_its_key(settings, run_worker):
    _queues(settings, {"emails": {"concurrency": 1}})
    _limits(settings, {"a": {"concurrency": 4}})
    alone = timed.using(queue="emails").enqueue("e1")
    both = timed.using(queue="emails", limit="a").enqueue("e2")
    other = timed.enqueue("default")
    keys = dict(Job.objects.values_list("job_id", "limit_key"))
    assert keys == {alone.id: "@queue:emails", both.id: "@queue:emails\na", other.id: None}
    run_worker(concurrency=2)
    assert set(Job.objects.values_list("status", flat=True)) == {"completed"}


@pytest.mark.django_db
def test_a_malformed_queues_setting_is_refused_at_enqueue_and_writes_nothing(settings):
    _queues(settings, {"emails": {"concurrency": 0}})
    with pytest.raises(InvalidJobError, match=r"QUEUES\['emails'\]\['concurrency'\] must be"):
        add.using(queue="emails").enqueue(1, 2)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("queues", "code", "words"),
    [
        (["emails"], "E060", "must be a dict of queue name -> limits"),
        ({"bad name": {"concurrency": 1}}, "E061", "'bad name' is not a queue name"),
        ({"emails": {"workers": 1}}, "E062", "has unknown keys ['workers']"),
        ({"emails": {"concurrency": 1.5}}, "E063", "must be a whole number >= 1"),
        ({"emails": {"rate": "100/d"}}, "E064", "['emails']: rate '100/d' is not of the form"),
    ],
)
def test_each_fault_of_queues_has_its_own_check(settings, queues, code, words):
    from django_jobqueue.checks import check_queue_limits

    _queues(settings, queues)
    (error,) = check_queue_limits()
    assert error.id == f"django_jobqueue.{code}"
    assert words in error.msg


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_queue_limit_holds_across_two_workers(settings, worker_processes, cache):
    """QUEUES = {"emails": {"concurrency": 2}}: two workers of four threads never run more
    than two jobs of the queue at once; the other queue's jobs are not held."""
    env = {"DJQ_JOBQUEUE": json.dumps(_queues(settings, {"emails": {"concurrency": 2}}, cache))}
    _flush_limits_cache(cache)
    workers = [worker_processes.start("--concurrency", "4", env=env) for _ in range(2)]
    for proc in workers:
        wait_until(lambda proc=proc: "worker started" in worker_processes.log(proc), 30)
    timed.using(queue="emails").enqueue_many([(f"e{i}", 0.1) for i in range(16)])
    timed.enqueue_many([("free", 0.2) for _ in range(6)])
    wait_until(lambda: Job.objects.filter(status="completed").count() == 22, timeout=90)
    emails = list(Interval.objects.exclude(tag="free"))
    assert len(emails) == 16
    assert max_overlap(emails) <= 2, sorted((r.started, r.ended, r.pid) for r in emails)
    assert max_overlap(Interval.objects.filter(tag="free")) > 2  # not held by the queue's
