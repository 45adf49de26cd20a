"""Limits per key (``JOBQUEUE["LIMITS"]``): concurrency and rate across workers, held in the
database or in Redis (``LIMITS_CACHE``); no head-of-line blocking; crashed workers' slots."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterable
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from django_jobqueue.models import Job
from django_jobqueue.querysets.limited import Hold
from tests.conftest import REDIS, requires_postgres, run_concurrently, wait_until
from tests.testapp.jobs import add, sleep_then_record, timed
from tests.testapp.models import Interval

#: Where the limits are held: the database, or Redis through the "limits" django-redis cache.
HOLDERS = [
    pytest.param(None, id="database"),
    pytest.param(
        "limits",
        id="redis",
        marks=pytest.mark.skipif(not REDIS, reason="needs REDIS_URL (django-redis)"),
    ),
]


def max_overlap(rows: Iterable[Interval]) -> int:
    """The most intervals running at one moment (an end and a start at the same instant do
    not overlap)."""
    events = sorted(
        [(row.started, 1) for row in rows] + [(row.ended, -1) for row in rows],
        key=lambda event: (event[0], event[1]),
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def most_starts_within(starts: list[datetime], seconds: float) -> int:
    """The most starts inside any window of ``seconds``."""
    starts = sorted(starts)
    most = 0
    for i, first in enumerate(starts):
        inside = [s for s in starts[i:] if (s - first).total_seconds() < seconds]
        most = max(most, len(inside))
    return most


def _limits(settings, limits: dict, cache: str | None = None) -> dict:
    settings.JOBQUEUE = {**settings.JOBQUEUE, "LIMITS": limits, "LIMITS_CACHE": cache}
    return {"LIMITS": limits, "LIMITS_CACHE": cache}


def _flush_limits_cache(cache: str | None) -> None:
    if cache is not None:
        from django_redis import get_redis_connection

        from django_jobqueue.worker.limiter import RedisLimiter

        redis = get_redis_connection(cache)
        prefix = RedisLimiter("default", "t", cache).cache.make_key("djq:limit:")
        for key in redis.scan_iter(match=prefix + "*"):
            redis.delete(key)


# -- in one worker process ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_concurrency_holds_within_one_worker(settings, run_worker, cache):
    _limits(settings, {"api": {"concurrency": 2}}, cache)
    _flush_limits_cache(cache)
    timed.using(limit="api").enqueue_many([(f"api-{i}", 0.15) for i in range(8)])
    worker = run_worker(concurrency=4)
    assert worker.processed == 8
    rows = list(Interval.objects.all())
    assert len(rows) == 8
    assert max_overlap(rows) == 2, [(r.started, r.ended) for r in rows]


@requires_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_slot_freed_on_the_short_path_is_claimed_at_once_not_at_the_next_poll(settings, cache):
    """Short jobs of one key run on the short path (worker/shortpath.py), whose window waits
    for them and so takes the wake-up their endings send: the slot they free must be claimed
    again at once. It was claimed at the next poll, so a key with ``concurrency`` 2 and a
    30 s ``POLL_INTERVAL`` ran 2 jobs per 30 s."""
    import threading

    from django_jobqueue.worker import Worker

    _limits(settings, {"api": {"concurrency": 2}}, cache)
    _flush_limits_cache(cache)
    # A window of 5 x 50 ms: the jobs report within it, even on a loaded machine; nothing
    # else wakes the loop for seconds (heartbeats every LEASE_SECONDS / 3).
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "POLL_INTERVAL": 30,
        "LEASE_SECONDS": 60,
        "SHORT_JOB_SECONDS": 0.05,
    }
    add.using(limit="api").enqueue_many([(i, i) for i in range(40)])
    worker = Worker(concurrency=4)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: Job.objects.filter(status="completed").count() == 40, timeout=20)
    finally:
        worker.stop()
        thread.join(30)
    assert worker._short.windows > 0  # the short path ran them, as it does short jobs


@pytest.mark.django_db(transaction=True)
def test_a_job_over_its_limit_stays_queued_and_does_not_block_its_queue(settings, run_worker):
    """Another worker holds the key's only slot: the limited jobs (higher priority, ahead in
    the queue) wait, untouched; the unlimited job behind them runs."""
    _limits(settings, {"api": {"concurrency": 1}})
    holder = timed.using(limit="api", priority=9).enqueue("held elsewhere")
    now = timezone.now()
    taken = Job.objects.claim_limited(
        "api",
        holds=[Hold("api", 1, None)],
        queue=None,
        limit=1,
        worker="elsewhere",
        now=now,
        lease_until=now + timedelta(seconds=60),
    )
    assert [job.job_id for job in taken] == [holder.id]
    waiting = timed.using(limit="api", priority=5).enqueue_many([(f"w{i}",) for i in range(5)])
    free = add.enqueue(1, 2)
    worker = run_worker(concurrency=2)
    assert worker.processed == 1
    assert Job.objects.get(job_id=free.id).status == "completed"
    rows = Job.objects.filter(job_id__in=[h.id for h in waiting])
    assert {(r.status, r.attempts, r.last_error, r.worker) for r in rows} == {("queued", 0, "", "")}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_prefix_pattern_limits_each_key_separately(settings, run_worker, cache):
    _limits(settings, {"tenant:*": {"concurrency": 1}}, cache)
    _flush_limits_cache(cache)
    for tenant in ("a", "b"):
        timed.using(limit=f"tenant:{tenant}").enqueue_many([(f"{tenant}", 0.15) for _ in range(3)])
    run_worker(concurrency=4)
    a = list(Interval.objects.filter(tag="a"))
    b = list(Interval.objects.filter(tag="b"))
    assert (len(a), len(b)) == (3, 3)
    assert (max_overlap(a), max_overlap(b)) == (1, 1)
    assert max_overlap(a + b) == 2  # the two tenants ran side by side


@pytest.mark.django_db(transaction=True)
def test_limited_and_unlimited_jobs_share_a_busy_worker(settings, run_worker):
    """A key with room and a backlog of other jobs (prefetched by a busy worker): neither
    kind waits for the other to drain."""
    _limits(settings, {"api": {"concurrency": 8}})
    timed.enqueue_many([("free",)] * 100)
    timed.using(limit="api").enqueue_many([("limited",)] * 40)
    run_worker(concurrency=2)
    order = "".join(
        tag[0] for tag in Interval.objects.order_by("started", "id").values_list("tag", flat=True)
    )
    assert len(order) == 140
    # While both kinds wait, neither runs long stretches alone: a worker claims about
    # PREFETCH (32) of the others per turn. Starved, the limited jobs would wait for all 100.
    while_both = order[: order.rindex("l")]
    assert max(len(run) for run in while_both.split("l")) <= 60, order
    assert "l" in order[:10] and "f" in order[:10], order


@pytest.mark.django_db(transaction=True)
def test_with_redis_unreachable_limited_jobs_wait_and_the_others_run(settings, run_worker, caplog):
    """LIMITS_CACHE names a django-redis cache whose server is not there (a closed port)."""
    settings.CACHES = {
        **settings.CACHES,
        "gone": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }
    _limits(settings, {"api": {"concurrency": 1}}, "gone")
    limited = timed.using(limit="api").enqueue_many([("limited",)] * 2)
    free = add.enqueue(1, 2)
    worker = run_worker(concurrency=2)
    assert worker.processed == 1
    assert Job.objects.get(job_id=free.id).status == "completed"
    rows = Job.objects.filter(job_id__in=[h.id for h in limited])
    assert {(r.status, r.attempts) for r in rows} == {("queued", 0)}
    assert "limits: Redis (cache 'gone') unreachable while reserving room" in caplog.text
    assert "jobs with a limit stay queued until it is back, the others run" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_malformed_limits_setting_holds_limited_jobs_and_runs_the_others(
    settings, run_worker, caplog
):
    _limits(settings, {"api": {"concurrency": 1}})
    limited = timed.using(limit="api").enqueue("limited")
    free = add.enqueue(1, 2)
    _limits(settings, {"api": {"rate": "fast"}})
    worker = run_worker(concurrency=2)
    assert worker.processed == 1
    assert Job.objects.get(job_id=free.id).status == "completed"
    assert Job.objects.get(job_id=limited.id).status == "queued"
    assert "JOBQUEUE['LIMITS'] is malformed" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_key_whose_entry_was_removed_runs_without_a_limit_and_says_so(
    settings, run_worker, caplog
):
    _limits(settings, {"gone": {"concurrency": 1}, "kept": {"concurrency": 1}})
    handles = timed.using(limit="gone").enqueue_many([("gone",)] * 3)
    _limits(settings, {"kept": {"concurrency": 1}})
    run_worker(concurrency=3)
    assert {Job.objects.get(job_id=h.id).status for h in handles} == {"completed"}
    assert "jobs with limit 'gone' have no entry in JOBQUEUE['LIMITS']" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_database_rate_window_counts_starts_of_the_last_period(settings):
    """Two claims in a row of a "3/h" key: the second finds the window full."""
    _limits(settings, {"api": {"rate": "3/h"}})
    timed.using(limit="api").enqueue_many([(f"r{i}",) for i in range(5)])
    now = timezone.now()
    options = {
        "holds": [Hold("api", None, (3, 3600.0))],
        "queue": None,
        "worker": "w",
        "now": now,
        "lease_until": now + timedelta(seconds=60),
    }
    assert len(Job.objects.claim_limited("api", limit=2, **options)) == 2
    assert len(Job.objects.claim_limited("api", limit=5, **options)) == 1
    assert Job.objects.claim_limited("api", limit=5, **options) == []
    assert Job.objects.filter(status="queued").count() == 2


@pytest.mark.django_db(transaction=True)
def test_limited_keys_are_listed_by_a_skip_scan_in_turns(settings):
    _limits(settings, {"k:*": {"concurrency": 1}})
    for key in ("k:c", "k:a", "k:b"):
        timed.using(limit=key).enqueue_many([("x",)] * 3)
    jobs = Job.objects
    assert jobs.queued_limit_keys(after="", count=10) == ["k:a", "k:b", "k:c"]
    assert jobs.queued_limit_keys(after="k:a", count=1) == ["k:b"]
    assert jobs.queued_limit_keys(after="k:c", count=10) == []


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_million_blocked_jobs_at_the_head_leave_the_claim_an_index_scan(settings, run_worker):
    """A million queued jobs of one key at its limit, all of a higher priority than the one
    unlimited job: the claim of unlimited jobs is an index scan that never reads them, and
    the worker runs the unlimited job at once."""
    _limits(settings, {"blocked": {"concurrency": 1}})
    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (job_id, name, queue, args, kwargs, status, priority, "
            "attempts, max_attempts, result_ttl, notify, enqueued_at, worker, last_error, "
            "cancel_requested, limit_key) "
            "SELECT 'blocked-' || n, 'tests.testapp.jobs.timed', 'default', '[\"b\"]', '{}', "
            "'queued', 10, 0, 3, 60, false, now(), '', '', false, 'blocked' "
            "FROM generate_series(1, 1000000) AS n"
        )
        # The key's one slot is taken (a running job of it, on another worker).
        cursor.execute(
            f"UPDATE {table} SET status = 'running', worker = 'elsewhere', attempts = 1, "
            "lease_expires_at = now() + interval '1 hour' WHERE job_id = 'blocked-1'"
        )
        cursor.execute(f"ANALYZE {table}")
    free = add.enqueue(1, 2)
    plan = Job.objects.explain_claim()
    assert "djq_claim_any" in plan, plan
    # The jobs are never scanned; the pause table (a row per paused queue) is read once.
    assert "Seq Scan on django_jobqueue_job" not in plan, plan
    analyzed = Job.objects.explain_claim(analyze=True)
    top = analyzed.splitlines()[0]
    assert "actual" in top and "rows=1 " in top, analyzed
    # A handful of pages read, not the million rows' index.
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", analyzed)
    assert buffers is not None, analyzed
    assert int(buffers.group(1)) + int(buffers.group(2) or 0) < 50, analyzed
    key_plan = Job.objects.explain_claim(limit_key="blocked")
    assert "djq_limit_queued" in key_plan, key_plan
    worker = run_worker(concurrency=2)
    assert worker.processed == 1
    assert Job.objects.get(job_id=free.id).status == "completed"
    assert Job.objects.filter(limit_key="blocked", status="queued").count() == 999_999


# -- across worker processes --------------------------------------------------------------------


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_concurrency_is_never_exceeded_by_two_workers_of_four_threads(
    settings, worker_processes, cache
):
    env = {"DJQ_JOBQUEUE": json.dumps(_limits(settings, {"api": {"concurrency": 2}}, cache))}
    _flush_limits_cache(cache)
    workers = [worker_processes.start("--concurrency", "4", env=env) for _ in range(2)]
    for proc in workers:  # both claim from the start: the race is real
        wait_until(lambda proc=proc: "worker started" in worker_processes.log(proc), 30)
    count = 24
    timed.using(limit="api").enqueue_many([(f"c{i}", 0.1) for i in range(count)])
    unlimited = timed.enqueue_many([("free", 0.05) for _ in range(8)])
    total = count + len(unlimited)
    wait_until(lambda: Job.objects.filter(status="completed").count() == total, timeout=60)
    rows = list(Interval.objects.exclude(tag="free"))
    assert len(rows) == count
    assert max_overlap(rows) == 2, sorted((r.started, r.ended, r.pid) for r in rows)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_rate_is_held_across_two_workers(settings, worker_processes, cache):
    env = {"DJQ_JOBQUEUE": json.dumps(_limits(settings, {"api": {"rate": "4/s"}}, cache))}
    _flush_limits_cache(cache)
    count = 12
    timed.using(limit="api").enqueue_many([(f"r{i}",) for i in range(count)])
    for _ in range(2):
        worker_processes.start("--concurrency", "4", env=env)
    wait_until(lambda: Interval.objects.count() == count, timeout=60)
    # The limit governs claims (a job's started_at, stamped when it is claimed); the job's
    # own start follows by a thread hand-off, which a loaded machine can stretch.
    claims = list(Job.objects.values_list("started_at", flat=True))
    assert most_starts_within(claims, 0.95) <= 4, sorted(claims)
    starts = [row.started for row in Interval.objects.all()]
    span = (max(starts) - min(starts)).total_seconds()
    assert span >= 2 * 0.8, sorted(starts)  # 12 starts at 4/s need two full windows more


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cache", HOLDERS)
def test_a_crashed_workers_slot_comes_back(settings, worker_processes, tmp_path, cache):
    """kill -9 while the key's one slot is held: after the lease (2 s in the tests) the
    slot is free again, the next job of the key runs, and the killed one runs again."""
    env = {"DJQ_JOBQUEUE": json.dumps(_limits(settings, {"api": {"concurrency": 1}}, cache))}
    _flush_limits_cache(cache)
    marker = tmp_path / "started"
    killed = sleep_then_record.using(limit="api").enqueue("killed", 30, str(marker))
    victim = worker_processes.start("--concurrency", "2", env=env)
    wait_until(marker.exists, timeout=20)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = timezone.now()
    Job.objects.filter(job_id=killed.id).update(args=["killed", 0, ""])
    after = timed.using(limit="api").enqueue("after")
    worker_processes.start("--concurrency", "2", env=env)
    wait_until(lambda: Job.objects.get(job_id=after.id).status == "completed", timeout=30)
    wait_until(lambda: Job.objects.get(job_id=killed.id).status == "completed", timeout=30)
    assert Job.objects.get(job_id=killed.id).attempts == 2
    # The slot stayed taken until the dead worker's lease ran out (renewed every 2/3 s, so
    # at least 4/3 s after the kill): the limit held meanwhile, then the slot came back.
    started = Interval.objects.get(tag="after").started
    assert started - killed_at >= timedelta(seconds=1.2), (killed_at, started)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_claimer_paused_inside_the_key_lock_stalls_no_other_worker(settings):
    """Found by scripts/chaos: a worker SIGSTOPped inside ``claim_limited`` held the key's
    advisory lock; every other worker's loop waited for it (their leases expired), and
    the claims that got the lock at last wrote leases computed before the wait, expired on
    arrival, so the jobs were reaped at once and a third ran beside a limit of two."""
    import psycopg

    from django_jobqueue.querysets import LOCK_SPACE

    _limits(settings, {"api": {"concurrency": 2}})
    timed.using(limit="api").enqueue_many([("a",), ("b",)])
    db = connection.settings_dict
    paused = psycopg.connect(
        dbname=db["NAME"], host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"]
    )
    paused.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [LOCK_SPACE, "api"])
    began = timezone.now() - timedelta(seconds=30)  # a claim that began 30 s ago
    options = {
        "holds": [Hold("api", 2, None)],
        "queue": None,
        "worker": "w",
        "now": began,
        "lease_until": began + timedelta(seconds=10),
    }
    try:
        (taken,) = run_concurrently(lambda: Job.objects.claim_limited("api", limit=2, **options))
        assert taken == []  # at once, not after the paused claimer resumes
    finally:
        paused.rollback()
        paused.close()
    taken = Job.objects.claim_limited("api", limit=2, **options)
    assert len(taken) == 2
    leases = Job.objects.filter(status="running").values_list("lease_expires_at", flat=True)
    assert all(lease > timezone.now() + timedelta(seconds=5) for lease in leases)
