"""The scale scenarios of ``bench/run.py`` (issue #27, "ten million rows"): the hot path's
figures on an empty job table against one that holds millions of finished jobs and a queued
backlog, and a churn soak with pruning on that samples the table's size and dead tuples.

Run through ``bench/run.py`` (``--only backlog``, ``--only soak``); Django is set up there.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from bench.run import percentile

if TYPE_CHECKING:
    from bench.run import Bench

#: Seconds between two samples of the soak.
SOAK_SAMPLE = 60.0
#: The soak's jobs keep their outcome this long (seconds), then the workers prune them.
SOAK_RESULT_TTL = 60
#: The soak's producer tops the queue up by this many jobs whenever fewer are queued.
SOAK_CHUNK = 2000


# -- loading ---------------------------------------------------------------------------------


def load_finished(n: int, queue: str, chunk: int = 1_000_000) -> float:
    """Insert ``n`` completed no-op jobs in ``queue`` with one ``INSERT ... SELECT`` over
    ``generate_series`` per ``chunk`` rows (PostgreSQL); return the seconds taken.

    The columns are copied from a template row that ``enqueue_many`` wrote (so every column
    the model has gets the value the library gives it), with a job id, the completed status
    and timestamps of their own. They expire in a day: the workers do not prune them during
    the run.
    """
    from django.db import connection

    from bench.benchapp.jobs import noop
    from django_jobqueue.base import Status
    from django_jobqueue.models import Job

    (handle,) = noop.using(queue=queue).enqueue_many([()])
    template = Job.objects.get(job_id=handle.id)
    fixed = {"id", "job_id", "status", "started_at", "finished_at", "expires_at", "attempts"}
    copied = [f.column for f in Job._meta.concrete_fields if f.column not in fixed]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in copied)
    source = ", ".join(f"t.{quote(c)}" for c in copied)
    sql = (
        f"INSERT INTO {quote(Job._meta.db_table)} (job_id, status, attempts, started_at, "
        f"finished_at, expires_at, {columns}) "
        f"SELECT 'bench-done-' || g, %s, 1, now() - interval '1 minute', now(), "
        f"now() + interval '1 day', {source} "
        f"FROM {quote(Job._meta.db_table)} t, generate_series(%s, %s) g WHERE t.id = %s"
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for start in range(1, n + 1, chunk):
            end = min(n, start + chunk - 1)
            cursor.execute(sql, [Status.COMPLETED, start, end, template.pk])
    Job.objects.filter(pk=template.pk).delete()
    return time.perf_counter() - started


# -- the hot path's figures ------------------------------------------------------------------


class _Rollback(Exception):
    pass


def claim_ms(queue: str, repeat: int = 200) -> float:
    """p50 of ``Job.objects.claim(queue=..., limit=10)`` from Python, each in a transaction
    rolled back (the claimed jobs stay queued), in milliseconds."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from django_jobqueue.models import Job

    timings: list[float] = []
    for _ in range(repeat):
        now = timezone.now()
        with contextlib.suppress(_Rollback), transaction.atomic():
            t0 = time.perf_counter()
            claimed = Job.objects.claim(
                queue=queue,
                limit=10,
                worker="bench-claim",
                now=now,
                lease_until=now + timedelta(seconds=30),
            )
            timings.append(time.perf_counter() - t0)
            if len(claimed) != 10:
                raise RuntimeError(f"claim took {len(claimed)} jobs of queue {queue!r}, not 10")
            raise _Rollback
    return percentile(timings, 50) * 1000


def enqueue_rate(n: int) -> float:
    """``noop.enqueue()`` one by one in autocommit (queue 'default'), jobs/s."""
    from bench.benchapp.jobs import noop

    for _ in range(50):  # warm-up
        noop.enqueue()
    started = time.perf_counter()
    for _ in range(n):
        noop.enqueue()
    return n / (time.perf_counter() - started)


def roundtrip_ms(b: Bench, n: int) -> float:
    """p50 of ``echo.using(timeout=5).enqueue_and_wait(i)`` with one idle worker on 'default'
    (nothing else queued there), in milliseconds."""
    from bench.benchapp.jobs import echo

    timings: list[float] = []
    with b.workers(1, "--queue", "default"):
        echo.using(timeout=30).enqueue_and_wait(-1)  # waits for the worker to start
        waiting = echo.using(timeout=5)
        for i in range(20):
            waiting.enqueue_and_wait(i)
        for i in range(n):
            t0 = time.perf_counter()
            waiting.enqueue_and_wait(i)
            timings.append(time.perf_counter() - t0)
    return percentile(timings, 50) * 1000


def hot_path(b: Bench, n: int, label: str) -> dict[str, float]:
    """enqueue, claim, drain and round trip in queue 'default' (empty before), whatever the
    rest of the table holds: {figure: value}; rates in jobs/s, times in ms."""
    from bench.benchapp.jobs import noop
    from bench.run import drain_some
    from django_jobqueue.models import Job

    figures: dict[str, float] = {}
    figures["enqueue jobs/s"] = enqueue_rate(min(n, 2000))
    queued = Job.objects.filter(queue="default", status="queued", limit_key__isnull=True).count()
    noop.enqueue_many([()] * (n - queued))
    b.analyze()
    b.checkpoint()
    figures["claim p50 ms"] = claim_ms("default")
    rate = drain_some(b, n, ("--queue", "default"), f"{label}, drain")
    figures["drain jobs/s"] = rate or math.nan
    figures["round trip p50 ms"] = roundtrip_ms(b, b.size("roundtrip") // 2)
    return figures


def compare(
    b: Bench,
    label: str,
    empty: dict[str, float],
    again: dict[str, float],
    loaded: dict[str, float],
) -> None:
    """Rows for each figure: the empty table's before and after the loaded one, the loaded
    one, and 'speed vs empty' against the empty ones' mean (rates loaded/empty, times
    empty/loaded: 100% is as fast, below 85% worse than the issue's 15%)."""
    for figure, before in empty.items():
        base, after = (before + again[figure]) / 2, loaded[figure]
        shown = "{:,.2f}" if figure.endswith("ms") else "{:,.0f}"
        values = " / ".join(shown.format(v) for v in (before, again[figure], after))
        b.row(label, f"{figure}: empty, empty again, loaded", values)
        fast = base / after if figure.endswith("ms") else after / base
        b.row(label, f"{figure}: speed vs empty", f"{fast:.0%}")


# -- churn soak ------------------------------------------------------------------------------


def table_stats() -> dict[str, int]:
    """The job table's heap and index sizes (bytes) and its pg_stat_user_tables counters."""
    from django.db import connection

    from django_jobqueue.models import Job

    table = Job._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT pg_relation_size(relid), pg_indexes_size(relid), n_live_tup, n_dead_tup, "
            "autovacuum_count, autoanalyze_count FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        )
        row = cursor.fetchone()
    keys = ["heap", "indexes", "live", "dead", "autovacuums", "autoanalyzes"]
    return dict(zip(keys, row, strict=True))


def set_reloptions(value: str) -> None:
    """``ALTER TABLE`` the job table ``SET (value)``, e.g. ``autovacuum_vacuum_cost_delay=0,
    fillfactor=90``: to measure a storage parameter against PostgreSQL's defaults."""
    import re

    from django.db import connection

    from django_jobqueue.models import Job

    if not re.fullmatch(r"\w+ *= *[\w.]+( *, *\w+ *= *[\w.]+)*", value):
        raise ValueError(f"--reloptions {value!r}: give name=value[,name=value...]")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {connection.ops.quote_name(Job._meta.db_table)} SET ({value})")


def reloptions() -> str:
    from django.db import connection

    from django_jobqueue.models import Job

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(array_to_string(reloptions, ', '), '') FROM pg_class "
            "WHERE relname = %s",
            [Job._meta.db_table],
        )
        return cursor.fetchone()[0] or "(defaults)"


def scenario_soak(b: Bench) -> None:
    """No-op jobs with ``result_ttl`` SOAK_RESULT_TTL flow through 2 workers x 2 threads for
    ``--minutes`` minutes: the producer keeps between one and two SOAK_CHUNKs queued, so jobs
    are enqueued at the rate they drain and the workers prune what expires. Every
    SOAK_SAMPLE seconds: jobs run, the job table's heap and index sizes, live and dead
    tuples, autovacuum and autoanalyze counts."""
    from bench.benchapp.jobs import noop
    from bench.run import fmt_rate

    if b.db != "postgres":
        b.note("soak: PostgreSQL only (it samples pg_stat_user_tables).")
        return
    minutes = b.minutes
    b.reset()
    if b.reloptions:
        set_reloptions(b.reloptions)
    b.analyze(vacuum=True)
    job = noop.using(result_ttl=SOAK_RESULT_TTL)
    job.enqueue_many([()] * SOAK_CHUNK)
    enqueued = SOAK_CHUNK
    samples: list[dict[str, Any]] = []
    header = "| min | jobs/s | heap MB | indexes MB | live | dead | autovacuums | autoanalyzes |"
    print("   " + header, flush=True)
    started = time.monotonic()
    end = started + minutes * 60
    next_sample = started + SOAK_SAMPLE
    last_done, last_at = 0, started
    with b.workers(2, concurrency=2):
        while time.monotonic() < min(end, b.deadline - 30):
            if b.unfinished(running=False) < SOAK_CHUNK:
                job.enqueue_many([()] * SOAK_CHUNK)
                enqueued += SOAK_CHUNK
            else:
                time.sleep(0.1)
            if time.monotonic() >= next_sample:
                now = time.monotonic()
                done = enqueued - b.unfinished()
                stats = table_stats()
                sample = {
                    "min": round((now - started) / 60),
                    "rate": (done - last_done) / (now - last_at),
                    **stats,
                }
                samples.append(sample)
                last_done, last_at = done, now
                next_sample += SOAK_SAMPLE
                print("   " + _sample_line(sample), flush=True)
        ran = enqueued - b.unfinished()
        seconds = time.monotonic() - started
    label = f"soak {minutes} min, result_ttl {SOAK_RESULT_TTL}s"
    b.row(label, "job table reloptions", reloptions())
    b.row(label, "jobs run", f"{ran:,}")
    b.row(label, "jobs/s", fmt_rate(ran, seconds))
    if len(samples) >= 4:
        half = len(samples) // 2
        first, second = samples[:half], samples[half:]
        for key, scale in (("heap MB", 2**20), ("indexes MB", 2**20), ("dead", 1)):
            field = key.split()[0]
            a, z = (max(s[field] for s in part) / scale for part in (first, second))
            shown = f"{a:,.1f} / {z:,.1f}" if scale > 1 else f"{a:,.0f} / {z:,.0f}"
            b.row(label, f"{key}, max 1st half / 2nd half", shown)
        # The size follows the rate (what one to two minutes of jobs leave): per job/s.
        per = [
            sum(s["heap"] / 1024 / s["rate"] for s in part if s["rate"]) / len(part)
            for part in (first, second)
        ]
        b.row(label, "heap KB per job/s, mean 1st half / 2nd half", f"{per[0]:.0f} / {per[1]:.0f}")
        grown = samples[-1]["heap"] + samples[-1]["indexes"]
        mid = samples[half]["heap"] + samples[half]["indexes"]
        b.row(label, "heap + indexes, growth over the 2nd half", f"{grown / mid - 1:+.0%}")
        b.row(
            label,
            "autovacuums during the run",
            f"{samples[-1]['autovacuums'] - samples[0]['autovacuums']}",
        )
    b.note(
        f"soak: {ran:,} no-op jobs with result_ttl={SOAK_RESULT_TTL}s through 2 `runjobworker "
        f"--concurrency 2` processes for {minutes} min; the producer enqueues {SOAK_CHUNK:,} "
        f"(enqueue_many) whenever fewer are queued, so it runs at the drain rate, and the "
        "workers prune what expires. Samples every minute (pg_relation_size, pg_indexes_size "
        "and pg_stat_user_tables of the job table; reloptions: "
        f"{reloptions()}):\n\n"
        + "\n".join([header, "|---" * 8 + "|"])
        + "\n"
        + "\n".join(_sample_line(s) for s in samples)
    )


def _sample_line(s: dict[str, Any]) -> str:
    return (
        f"| {s['min']} | {s['rate']:,.0f} | {s['heap'] / 2**20:,.1f} | "
        f"{s['indexes'] / 2**20:,.1f} | {s['live']:,} | {s['dead']:,} | {s['autovacuums']} | "
        f"{s['autoanalyzes']} |"
    )
