#!/usr/bin/env python
"""django-jobqueue benchmarks: one entry point.

    python bench/run.py [--db postgres|sqlite|all] [--quick] [--only SCENARIO ...]
    python bench/run.py --profile roundtrip|worker      # cProfile of one side, PostgreSQL + Redis

Scenarios: enqueue, enqueue_many, drain, roundtrip, chain, wakeup, backlog, memory (see
bench/README.md). The parent process prepares each database (drops and recreates the
PostgreSQL database, or makes a fresh SQLite file in a temporary directory), then runs the
scenarios of that database in a child process (Django settings are per process), which starts
and stops ``runjobworker`` subprocesses itself. Every wait is bounded; every subprocess is
killed on the way out. The table is printed at the end and written to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIOS = [
    "enqueue",
    "enqueue_many",
    "drain",
    "roundtrip",
    "chain",
    "enqueue_wait",
    "floor",
    "wakeup",
    "backlog",
    "memory",
    "limits",
    "prune",
    "watchers",
    "cpu",
    "soak",
]
#: Not in --quick; in a full run on PostgreSQL only (SQLite: name them with --only).
SLOW = {"backlog", "memory", "prune", "watchers", "cpu"}
#: Never in a full run: name them with --only (they take many minutes).
LONG = {"soak"}
DB_LABEL = {"postgres": "PostgreSQL + Redis", "sqlite": "SQLite + polling"}
DEFAULT_PG_URL = "postgres://postgres@127.0.0.1:5432/djq_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# What the numbers are chased against (PostgreSQL + Redis).
AIMS = {
    ("enqueue one by one", "jobs/s"): ">= 2,500",
    ("enqueue_many", "jobs/s"): ">= 30,000",
    ("drain, 2 workers x 2 threads", "jobs/s (from spawn)"): ">= 3,000",
    ("drain, 2 workers x 2 threads", "jobs/s (DB window)"): ">= 3,000",
    ("round trip, RedisChannelLayer", "p50 ms"): "<= 2",
    ("round trip, RedisChannelLayer", "p99 ms"): "<= 5",
    ("round trip, RedisPubSubChannelLayer", "p50 ms"): "<= 2",
    ("round trip, RedisPubSubChannelLayer", "p99 ms"): "<= 5",
    ("chain of 3 no-op jobs, RedisChannelLayer", "vs one round trip, p50"): "<= 3x",
    ("chain of 3 no-op jobs, RedisPubSubChannelLayer", "vs one round trip, p50"): "<= 3x",
    **{
        ("backlog, loaded", f"{figure}: speed vs empty"): ">= 85%"
        for figure in ("enqueue jobs/s", "claim p50 ms", "drain jobs/s", "round trip p50 ms")
    },
    ("backlog, loaded", "claim plan"): "index scan",
    ("worker RSS", "growth 5k -> 100k jobs, MB"): "< 20",
}

SIZES: dict[str, dict[str, int]] = {
    "full": {
        "enqueue": 5000,
        "enqueue_many": 50_000,
        "drain": 10_000,
        "drain_sqlite": 6000,
        "roundtrip": 500,
        "roundtrip_sqlite": 100,
        "chain": 200,
        "chain_sqlite": 50,
        "enqueue_wait": 200,
        "enqueue_wait_sqlite": 50,
        "wakeup": 200,
        "wakeup_sqlite": 100,
        "backlog": 1_000_000,
        "backlog_queued": 100_000,
        "backlog_drain": 5000,
        "memory": 100_000,
        "limits": 4000,
        "prune": 200_000,
        "cpu": 400,
    },
    "quick": {
        "enqueue": 1000,
        "enqueue_many": 20_000,
        "drain": 4000,
        "drain_sqlite": 2000,
        "roundtrip": 200,
        "roundtrip_sqlite": 50,
        "chain": 50,
        "chain_sqlite": 20,
        "enqueue_wait": 200,
        "enqueue_wait_sqlite": 30,
        "wakeup": 50,
        "wakeup_sqlite": 30,
        "backlog": 100_000,
        "backlog_queued": 10_000,
        "backlog_drain": 2000,
        "memory": 20_000,
        "limits": 2000,
        "prune": 40_000,
        "cpu": 200,
    },
}


# ------------------------------------------------------------------------------------------
# parent: prepare databases, run one child per database, print the table
# ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--db", choices=["postgres", "sqlite", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="smaller N, no backlog/memory")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help="run only these: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--profile",
        choices=["roundtrip", "worker"],
        help="profile one side with cProfile (PostgreSQL + Redis) instead",
    )
    parser.add_argument(
        "--backlog-rows",
        type=int,
        help="backlog: finished jobs loaded (default 1,000,000; issue #27's figure: 10,000,000)",
    )
    parser.add_argument(
        "--minutes", type=int, default=30, help="soak: how long it runs (default 30)"
    )
    parser.add_argument(
        "--reloptions",
        help="soak: ALTER TABLE the job table SET (these) first, e.g. "
        "'autovacuum_vacuum_cost_delay=0,fillfactor=90'",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="with roundtrip: time each step of the round trip, beside its floor",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--load-jobs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_jobs is not None:  # a loader process of Bench.load
        import django

        django.setup()
        load_jobs(args.load_jobs, args.queue)
        return 0
    if args.child:
        return child_main(args)

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.breakdown:
        os.environ["BENCH_BREAKDOWN"] = "1"  # the child's roundtrip reads it
    # SIGTERM stops the run like Ctrl-C: the child is stopped, it stops its workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.profile:
        dbs = ["postgres"]
    else:
        dbs = ["postgres", "sqlite"] if args.db == "all" else [args.db]
    total_budget = 115.0 if args.quick else 580.0
    if args.only and "soak" in args.only:
        total_budget += args.minutes * 60 + 60
    if args.only and "backlog" in args.only and args.backlog_rows:
        total_budget += args.backlog_rows / 10_000  # about 1,000 s more for 10M rows
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for index, db in enumerate(dbs):
        if args.profile:
            scenarios: list[str] = []
        elif args.only:
            scenarios = list(args.only)
        else:
            scenarios = [
                s
                for s in SCENARIOS
                if s not in LONG and (s not in SLOW or (db == "postgres" and not args.quick))
            ]
        left = total_budget - (time.monotonic() - started)
        # Leave the later databases their share of what is left.
        reserve = 45 if args.quick else 110  # what SQLite needs after PostgreSQL
        budget = left if index == len(dbs) - 1 else max(left * 0.5, left - reserve)
        print(
            f"\n=== {DB_LABEL[db]}: {', '.join(scenarios) or 'profile ' + args.profile} "
            f"(budget {budget:.0f}s) ===",
            flush=True,
        )
        extra: tuple[str, ...] = ("--minutes", str(args.minutes))
        if args.backlog_rows:
            extra += ("--backlog-rows", str(args.backlog_rows))
        if args.reloptions:
            extra += ("--reloptions", args.reloptions)
        results[db] = run_child(
            db, scenarios, quick=args.quick, budget=budget, profile=args.profile, extra=extra
        )
    elapsed = time.monotonic() - started
    if args.profile:
        return 0 if all(r.get("ok") for r in results.values()) else 1
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    report = render(results, dbs, command.strip(), elapsed, quick=args.quick)
    print("\n" + report)
    (RESULTS / "latest.md").write_text(report)
    print(f"written to {RESULTS / 'latest.md'}")
    return 0 if all(r.get("ok") for r in results.values()) else 1


def prepare_postgres(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/") or "djq_bench"
    admin = parsed._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run_child(
    db: str,
    scenarios: list[str],
    *,
    quick: bool,
    budget: float,
    profile: str | None,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        BENCH_DB=db,
        DJANGO_SETTINGS_MODULE="bench.settings",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        BENCH_REDIS_PREFIX=f"djqbench{os.getpid()}{db[:2]}:",
        PYTHONUNBUFFERED="1",
    )
    tmpdir = None
    if db == "postgres":
        env.setdefault("DATABASE_URL", DEFAULT_PG_URL)
        prepare_postgres(env["DATABASE_URL"])
    else:
        tmpdir = tempfile.mkdtemp(prefix="djq_bench_")
        env["BENCH_SQLITE_DIR"] = tmpdir
    out = Path(tempfile.mkstemp(prefix=f"djq_bench_{db}_", suffix=".json")[1])
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--db",
        db,
        "--out",
        str(out),
        "--budget",
        f"{budget:.1f}",
        *extra,
    ]
    if quick:
        cmd.append("--quick")
    if scenarios:
        cmd += ["--only", *scenarios]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        proc.wait(timeout=budget + 30)
    except subprocess.TimeoutExpired:
        print(f"!! {db}: the child ran past its budget; stopping it", flush=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            proc.kill()
        raise
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
        try:
            data = json.loads(out.read_text() or "{}")
        except (OSError, ValueError):
            data = {}
        out.unlink(missing_ok=True)
    data.setdefault("rows", [])
    data.setdefault("notes", [])
    data["ok"] = proc.returncode == 0 and data.get("ok", False)
    if proc.returncode != 0:
        data["notes"].append(f"child exited with code {proc.returncode}")
    return data


def render(
    results: dict[str, dict[str, Any]], dbs: list[str], command: str, elapsed: float, *, quick: bool
) -> str:
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str], dict[str, str]] = {}
    for db in dbs:
        for row in results[db]["rows"]:
            key = (row["scenario"], row["metric"])
            if key not in values:
                keys.append(key)
                values[key] = {}
            values[key][db] = row["value"]
    head = ["Scenario", "Metric", *[DB_LABEL[db] for db in dbs], "Aim (PG + Redis)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [key[0], key[1], *[values[key].get(db, "") for db in dbs], AIMS.get(key, "")]
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        f"# django-jobqueue benchmarks{' (quick)' if quick else ''}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; run took {elapsed:.0f}s.",
        "",
        *lines,
        "",
    ]
    for db in dbs:
        notes = results[db]["notes"]
        if notes:
            out += [f"## Notes: {DB_LABEL[db]}", ""]
            for note in notes:
                out += [note, ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# child: one database, Django set up, scenarios in order
# ------------------------------------------------------------------------------------------


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In a subprocess before exec (Linux): get SIGKILL when the process that started it dies,
    so no worker outlives a benchmark that was killed outright. (Resolved before the fork:
    nothing is imported between fork and exec.)"""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def load_jobs(n: int, queue: str | None, chunk: int = 10_000) -> None:
    """enqueue_many ``n`` no-op jobs (Django must be set up)."""
    from bench.benchapp.jobs import noop

    job = noop.using(queue=queue) if queue else noop
    done = 0
    while done < n:
        size = min(chunk, n - done)
        job.enqueue_many([()] * size)
        done += size


class Bench:
    def __init__(
        self,
        db: str,
        quick: bool,
        budget: float,
        *,
        minutes: int = 30,
        backlog: int = 0,
        reloptions: str = "",
    ) -> None:
        self.db = db
        self.quick = quick
        self.minutes = minutes
        self.reloptions = reloptions
        self.sizes = dict(SIZES["quick" if quick else "full"])
        if backlog:
            self.sizes["backlog"] = backlog
        self.deadline = time.monotonic() + budget
        self.rows: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = RESULTS / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._spawned = 0
        self.failed = False

    # -- output ------------------------------------------------------------------------

    def row(self, scenario: str, metric: str, value: str) -> None:
        self.rows.append({"scenario": scenario, "metric": metric, "value": value})
        print(f"   {scenario:<34} {metric:<30} {value}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def size(self, name: str) -> int:
        return self.sizes.get(f"{name}_{self.db}", self.sizes[name])

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def bound(self, seconds: float) -> float:
        """A monotonic deadline ``seconds`` from now, never past the child's budget."""
        return time.monotonic() + max(1.0, min(seconds, self.left() - 5))

    # -- database ------------------------------------------------------------------------

    def reset(self) -> None:
        """Empty the job tables and this run's Redis keys (no worker may be running)."""
        from django.db import connection

        from django_jobqueue.models import DeadLetter, Job, JobResult

        tables = [m._meta.db_table for m in (JobResult, DeadLetter, Job)]
        with connection.cursor() as cursor:
            if self.db == "postgres":
                cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
            else:
                for table in tables:
                    cursor.execute(f"DELETE FROM {table}")
        self.flush_redis()

    def flush_redis(self) -> None:
        from django.conf import settings

        if settings.BENCH_CHANNELS != "redis":
            return
        import redis

        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    def layers(self) -> list[str | None]:
        """The channel-layer aliases to measure notifications with (None: polling)."""
        from django.conf import settings

        return ["default", "pubsub"] if settings.BENCH_CHANNELS == "redis" else [None]

    @contextlib.contextmanager
    def layer(self, alias: str | None) -> Iterator[str]:
        """Use ``alias`` here and in the workers spawned meanwhile; yield its label."""
        from django.conf import settings
        from django.test import override_settings

        from django_jobqueue.notifications import reset_hub

        if alias is None:
            yield f"polling, POLL_INTERVAL={settings.JOBQUEUE['POLL_INTERVAL']}s"
            return
        before = settings.JOBQUEUE["CHANNEL_LAYER"]
        os.environ["BENCH_CHANNEL_LAYER"] = alias
        try:
            with override_settings(JOBQUEUE={**settings.JOBQUEUE, "CHANNEL_LAYER": alias}):
                reset_hub()
                yield settings.CHANNEL_LAYERS[alias]["BACKEND"].rsplit(".", 1)[-1]
        finally:
            os.environ["BENCH_CHANNEL_LAYER"] = before
            reset_hub()

    def count(self, status: str = "completed") -> int:
        from django_jobqueue.models import Job

        return Job.objects.filter(status=status).count()

    def unfinished(self, *, running: bool = True) -> int:
        """Queued (and ``running``) jobs without a limit, counted from the partial indexes
        that hold only them (djq_claim_any, djq_lease): cheap however many finished rows
        the table holds, where COUNT of a status reads the whole table."""
        from django_jobqueue.models import Job

        queued = Job.objects.filter(status="queued", limit_key__isnull=True).count()
        return queued + (self.count("running") if running else 0)

    def load(
        self,
        n: int,
        *,
        queue: str | None = None,
        analyze: bool = True,
        processes: int = 1,
        bound: float = 240,
    ) -> float:
        """enqueue_many ``n`` no-op jobs, 10,000 per call, in ``processes`` processes at
        once; return the seconds taken.

        Then ANALYZE the job table (not timed), as autovacuum would sooner or later: the claim
        query's plan depends on the statistics (see the backlog scenario).
        """
        started = time.perf_counter()
        if processes <= 1:
            load_jobs(n, queue)
        else:
            share = [n // processes + (i < n % processes) for i in range(processes)]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--load-jobs"]
            procs = [
                subprocess.Popen(
                    [*cmd, str(k), *(["--queue", queue] if queue else [])],
                    cwd=ROOT,
                    env=worker_env(),
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
                for k in share
            ]
            self.procs += procs
            deadline = self.bound(bound)
            wait_until(lambda: all(p.poll() is not None for p in procs), deadline, 0.1)
            for proc in procs:
                self.stop(proc)
                if proc.returncode != 0:
                    raise RuntimeError(f"a loader process exited with {proc.returncode}")
        elapsed = time.perf_counter() - started
        if analyze:
            self.analyze()
        return elapsed

    def fresh_table(self) -> None:
        """Drop and recreate the library's tables: no statistics, as on a fresh install."""
        from django.core.management import call_command

        self.reset()
        call_command("migrate", "django_jobqueue", "zero", verbosity=0, interactive=False)
        call_command("migrate", verbosity=0, interactive=False)

    def analyze(self, *, vacuum: bool = False) -> None:
        """ANALYZE the job table. ``vacuum`` (PostgreSQL): VACUUM (ANALYZE), the pass
        autovacuum makes after a big load (visibility map, hint bits, statistics), done now
        rather than in the middle of the next measurement."""
        from django.db import connection

        from django_jobqueue.models import Job

        table = Job._meta.db_table
        with connection.cursor() as cursor:
            if vacuum and self.db == "postgres":
                cursor.execute(f"VACUUM (ANALYZE) {table}")
            else:
                cursor.execute(f"ANALYZE {table}")

    def checkpoint(self) -> None:
        """PostgreSQL: write out the dirty pages of what was just loaded now, so that the
        checkpoint a big load triggers does not run during the next measurement."""
        from django.db import DatabaseError, connection

        if self.db == "postgres":
            with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("CHECKPOINT")

    def autovacuum(self, on: bool) -> None:
        """Switch autovacuum (and so auto-ANALYZE) of the job table on or off (PostgreSQL)."""
        from django.db import connection

        from django_jobqueue.models import Job

        if self.db == "postgres":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"ALTER TABLE {Job._meta.db_table} SET "
                    f"(autovacuum_enabled = {'true' if on else 'false'})"
                )

    # -- workers -------------------------------------------------------------------------

    def spawn(
        self, *extra: str, burst: bool = False, concurrency: int | None = 2
    ) -> subprocess.Popen[bytes]:
        """A ``runjobworker`` process; ``concurrency`` None: the command's default."""
        self._spawned += 1
        cmd = [sys.executable, "-m", "django", "runjobworker", "-v", "0"]
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        cmd += extra
        if burst:
            cmd.append("--burst")
        env = worker_env()
        log = open(self.logdir / f"worker-{self.db}-{self._spawned}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.procs.clear()

    @contextlib.contextmanager
    def workers(
        self, n: int, *extra: str, burst: bool = False, concurrency: int | None = 2
    ) -> Iterator[list[subprocess.Popen[bytes]]]:
        procs = [self.spawn(*extra, burst=burst, concurrency=concurrency) for _ in range(n)]
        try:
            yield procs
        finally:
            for proc in procs:
                self.stop(proc)

    def worker_log_tail(self, n: int = 3) -> str:
        logs = sorted(self.logdir.glob(f"worker-{self.db}-*.log"), key=lambda p: p.stat().st_mtime)
        text = []
        for path in logs[-n:]:
            content = path.read_text(errors="replace").strip().splitlines()[-5:]
            if content:
                text.append(f"{path.name}: " + " / ".join(content))
        return "; ".join(text)


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU time that was busy over ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return math.nan
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_until(condition: Callable[[], bool], deadline: float, interval: float = 0.05) -> bool:
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def fmt_rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "n/a"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# -- scenarios -------------------------------------------------------------------------------


def scenario_enqueue(b: Bench) -> None:
    from bench.benchapp.jobs import noop

    b.reset()
    for _ in range(50):  # warm-up: connection, hub thread, channel layer pool
        noop.enqueue()
    n = b.size("enqueue")
    deadline = b.bound(30)
    done = 0
    started = time.perf_counter()
    while done < n and time.monotonic() < deadline:
        noop.enqueue()
        done += 1
    elapsed = time.perf_counter() - started
    b.row("enqueue one by one", "jobs/s", fmt_rate(done, elapsed))
    if done < n:
        b.note(f"enqueue one by one: stopped by its time bound after {done} of {n} jobs.")
    raw = raw_insert_rate(min(n, 2000))
    b.row("enqueue one by one", "baseline: raw 1-row INSERT commits/s", fmt_rate(*raw))
    b.note(
        "enqueue one by one: `noop.enqueue()` in autocommit, one transaction per job. The "
        "baseline is the same table's single-row INSERT (hand-written SQL through Django's "
        "cursor, one commit each): what the database and disk allow one connection here."
    )


def raw_insert_rate(n: int) -> tuple[int, float]:
    import uuid

    from django.db import connection
    from django.utils import timezone

    from django_jobqueue.models import Job

    table = connection.ops.quote_name(Job._meta.db_table)
    group = connection.ops.quote_name("group")
    sql = (
        f"INSERT INTO {table} (job_id, name, queue, args, kwargs, priority, {group}, "
        "max_attempts, result_ttl, notify, enqueued_at, status, attempts, worker, last_error) "
        "VALUES (%s, 'raw', 'raw', '[]', '{}', 0, NULL, 3, 3600, false, %s, 'completed', 0, "
        "'', '')"
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        started = time.perf_counter()
        for _ in range(n):
            cursor.execute(sql, [uuid.uuid4().hex, now])
        return n, time.perf_counter() - started


def scenario_enqueue_many(b: Bench) -> None:
    from bench.benchapp.jobs import noop

    b.reset()
    noop.enqueue_many([()] * 1000)  # warm-up
    n = b.size("enqueue_many")
    started = time.perf_counter()
    handles = noop.enqueue_many([()] * n)
    elapsed = time.perf_counter() - started
    assert len(handles) == n
    b.row("enqueue_many", "jobs/s", fmt_rate(n, elapsed))


def drain_window() -> tuple[Any, Any, int]:
    from django.db.models import Count, Max, Min

    from django_jobqueue.models import Job

    agg = Job.objects.filter(status="completed").aggregate(
        first=Min("started_at"), last=Max("finished_at"), n=Count("id")
    )
    return agg["first"], agg["last"], agg["n"]


def drain(
    b: Bench,
    n: int,
    nworkers: int,
    label: str,
    *,
    fresh: bool = False,
    bound: float = 90,
    concurrency: int | None = 2,
) -> str:
    """Bulk-enqueue ``n`` no-op jobs, then time ``nworkers`` burst workers draining them.

    ``fresh``: on a job table just created and never ANALYZEd (a fresh install before
    autovacuum's first pass; autovacuum is held off meanwhile); the drain may stop at
    ``bound`` and then reports the rate so far. Returns the claim query's plan (PostgreSQL,
    ``fresh`` only) as it was before the workers started.
    """
    from django_jobqueue.models import Job

    if fresh:
        b.fresh_table()
        b.autovacuum(False)
    else:
        b.reset()
    plan = ""
    try:
        b.load(n, analyze=not fresh)
        if fresh and b.db == "postgres":
            plan = explain(claim_sql(None))
        wall_start = time.time()
        started = time.perf_counter()
        deadline = b.bound(bound)
        with b.workers(nworkers, burst=True, concurrency=concurrency) as procs:
            done = wait_until(lambda: b.count() >= n, deadline, interval=0.05)
            finished = time.perf_counter()
            if done:
                wait_until(lambda: all(p.poll() is not None for p in procs), b.bound(15))
            exited = time.perf_counter()
    finally:
        if fresh:
            b.autovacuum(True)
    first, last, completed = drain_window()
    suffix = "" if done else f" ({completed:,} of {n:,} in {bound:.0f}s)"
    b.row(label, "jobs/s (from spawn)", fmt_rate(completed, finished - started) + suffix)
    if first and last and completed:
        window = (last - first).total_seconds()
        b.row(label, "jobs/s (DB window)", fmt_rate(completed, window))
        b.row(label, "startup s (spawn -> 1st claim)", f"{first.timestamp() - wall_start:.2f}")
    retried = Job.objects.filter(attempts__gt=1).count()
    if (not done and not fresh) or retried:
        b.note(
            f"{label}: {completed} of {n} completed before the bound; {retried} jobs ran "
            f"more than once; workers exited {exited - finished:.1f}s after the last job. "
            + b.worker_log_tail()
        )
    if not done and not fresh:
        b.failed = True
    return plan


def scenario_drain(b: Bench) -> None:
    n = b.size("drain")
    # What a user who follows the quickstart gets: `runjobworker` with no options.
    drain(b, n, 2, "drain, 2 workers, defaults", concurrency=None)
    drain(b, n, 1, "drain, 1 worker x 2 threads")
    drain(b, n, 2, "drain, 2 workers x 2 threads")
    # The worker claims and completes about `concurrency` jobs per statement: more threads,
    # bigger batches, fewer commits per job.
    drain(b, n, 2, "drain, 2 workers x 16 threads", concurrency=16)
    plan = drain(b, n, 2, "drain, 2 workers, fresh table", fresh=True, bound=15)
    if plan:
        b.row("drain, 2 workers, fresh table", "claim plan (queue=None)", plan_summary(plan))
        b.note(
            f"EXPLAIN (ANALYZE, BUFFERS) of the claim query of a worker serving every queue, "
            f"{n:,} jobs queued in a job table never ANALYZEd:\n\n```\n{plan}\n```"
        )
    b.note(
        f"drain: {n:,} no-op jobs bulk-enqueued (then ANALYZE), then `runjobworker --burst "
        "--concurrency 2 -v 0` subprocesses; 'from spawn' counts from starting the processes "
        "to the last completion seen (polling COUNT every 50 ms), 'DB window' from the first "
        "job's started_at to the last finished_at. 'defaults': `runjobworker --burst -v 0` "
        "with no --concurrency (the command's default). 'x 16 threads': `--concurrency 16`, "
        "because a worker claims and completes about `concurrency` jobs per statement. "
        "'fresh table': the same on a job table "
        "just created (migrate django_jobqueue zero, migrate) and never ANALYZEd, autovacuum "
        "held off, as on a fresh install before autovacuum's first pass; bounded to 15 s."
    )


def scenario_roundtrip(b: Bench) -> None:
    for alias in b.layers():
        with b.layer(alias) as mode:
            roundtrip(b, mode)


def roundtrip(b: Bench, mode: str) -> None:
    from bench.benchapp.jobs import echo
    from django_jobqueue.models import Job

    b.reset()
    n = b.size("roundtrip")
    timings: dict[int, tuple[float, float]] = {}  # x -> (wall start, wall end)
    errors: list[str] = []
    base = 1_000_000
    stamps = Breakdown(b) if os.environ.get("BENCH_BREAKDOWN") else None
    with stamps or contextlib.nullcontext(), b.workers(1):
        # The first wait also waits for the worker process to start.
        try:
            echo.using(timeout=20).enqueue_and_wait(-1)
        except Exception as exc:
            errors.append(f"first wait: {exc!r}")
        waiting = echo.using(timeout=5)
        for i in range(20):
            with contextlib.suppress(Exception):
                waiting.enqueue_and_wait(i)
        deadline = b.bound(90)
        for i in range(n):
            if time.monotonic() > deadline:
                errors.append(f"stopped by the time bound after {i} round trips")
                break
            x = base + i
            t0 = time.time()
            try:
                value = waiting.enqueue_and_wait(x)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            timings[x] = (t0, time.time())
            if stamps is not None:
                stamps.called(*timings[x])
            if value != x:
                errors.append(f"got {value!r} for {x}")
    # Where the time went, from the timestamps the library writes: enqueued_at (stamped
    # before subscribing), started_at (stamped by the worker before its claim query),
    # finished_at (stamped before the completion is written).
    phases: dict[str, list[float]] = {
        "call -> started_at": [],
        "started_at -> finished_at": [],
        "finished_at -> return": [],
    }
    for args, started, finished in Job.objects.filter(name=echo.name).values_list(
        "args", "started_at", "finished_at"
    ):
        x = args[0] if args else None
        if x in timings and started and finished:
            t0, t1 = timings[x]
            phases["call -> started_at"].append(started.timestamp() - t0)
            phases["started_at -> finished_at"].append((finished - started).total_seconds())
            phases["finished_at -> return"].append(t1 - finished.timestamp())
    total = [t1 - t0 for t0, t1 in timings.values()]
    label = f"round trip, {mode}"
    b.row(label, "samples", f"{len(total)}")
    for p in (50, 95, 99):
        b.row(label, f"p{p} ms", fmt_ms(percentile(total, p)))
    b.row(label, "max ms", fmt_ms(max(total) if total else math.nan))
    for phase, values in phases.items():
        b.row(label, f"p50 ms, {phase}", fmt_ms(percentile(values, 50)))
    if errors:
        b.note(f"round trip, {mode}: {len(errors)} errors: {'; '.join(errors[:5])}")
    if stamps is not None:
        stamps.report(f"round trip breakdown, {mode}")
    b.note(
        f"round trip, {mode}: one idle `runjobworker --concurrency 2` process; 20 warm-up then {n} "
        f"sequential `echo.using(timeout=5).enqueue_and_wait(i)` ({mode}). Phases from the "
        "job's own timestamps: 'call -> started_at' is subscribe + INSERT + wake-up + "
        "worker wake; 'started_at -> finished_at' is the claim query, hand-off to the job "
        "thread, the job, hand-back; 'finished_at -> return' is the completion write, the "
        "'finished' notification and the waiter's read."
    )


def scenario_chain(b: Bench) -> None:
    """A chain of 3 no-op jobs, enqueued and waited for (``chain(...).enqueue_and_wait``),
    against one round trip, alternately on one idle worker: the cost of a workflow's steps
    (each child queued in its parent's ending transaction, then claimed)."""
    from bench.benchapp.jobs import echo, noop
    from django_jobqueue import chain

    for alias in b.layers():
        with b.layer(alias) as mode:
            b.reset()
            n = b.size("chain")
            took: dict[str, list[float]] = {"round trip": [], "chain": []}
            errors: list[str] = []
            three = chain(noop.bind(), noop.bind(), noop.bind())
            with b.workers(1):
                echo.using(timeout=20).enqueue_and_wait(-1)  # the worker is up
                waiting = echo.using(timeout=5)
                for i in range(10):  # warm-up, both kinds
                    with contextlib.suppress(Exception):
                        waiting.enqueue_and_wait(i)
                        three.enqueue_and_wait(timeout=5)
                deadline = b.bound(90)
                for i in range(n):  # alternately: both see the same machine
                    if time.monotonic() > deadline:
                        errors.append(f"stopped by the time bound after {i} pairs")
                        break
                    calls: tuple[tuple[str, Callable[[], Any]], ...] = (
                        ("round trip", functools.partial(waiting.enqueue_and_wait, i)),
                        ("chain", functools.partial(three.enqueue_and_wait, timeout=5)),
                    )
                    for kind, call in calls:
                        t0 = time.perf_counter()
                        try:
                            call()
                        except Exception as exc:
                            errors.append(f"{kind}: {exc!r}")
                            continue
                        took[kind].append(time.perf_counter() - t0)
            label = f"chain of 3 no-op jobs, {mode}"
            b.row(label, "samples", f"{len(took['chain'])}")
            one, three_p50 = percentile(took["round trip"], 50), percentile(took["chain"], 50)
            b.row(label, "p50 ms, one round trip", fmt_ms(one))
            b.row(label, "p50 ms, the chain", fmt_ms(three_p50))
            b.row(label, "p99 ms, the chain", fmt_ms(percentile(took["chain"], 99)))
            b.row(label, "vs one round trip, p50", f"{three_p50 / one:.2f}x" if one else "-")
            if errors:
                b.note(f"{label}: {len(errors)} errors: {'; '.join(errors[:5])}")
    b.note(
        "chain: one idle `runjobworker --concurrency 2`; 10 warm-up pairs, then alternately "
        "`echo.using(timeout=5).enqueue_and_wait(i)` and `chain(noop.bind(), noop.bind(), "
        "noop.bind()).enqueue_and_wait(timeout=5)` (one transaction for the three; each "
        "child queued in its parent's ending transaction, then claimed)."
    )


def scenario_enqueue_wait(b: Bench) -> None:
    """``h = echo.enqueue(i)`` then ``h.wait()``, one pair after another with one idle worker:
    the pattern of the lost wake-up (the waiter's subscribe locked the row while the woken
    worker's SKIP LOCKED claim passed over it, and the job waited a whole POLL_INTERVAL)."""
    from bench.benchapp.jobs import echo

    for alias in b.layers():
        with b.layer(alias) as mode:
            b.reset()
            n = b.size("enqueue_wait")
            took: list[float] = []
            errors: list[str] = []
            with b.workers(1):
                echo.using(timeout=20).enqueue_and_wait(-1)  # the worker is up
                deadline = b.bound(90)
                for i in range(n):
                    if time.monotonic() > deadline:
                        errors.append(f"stopped by the time bound after {i} pairs")
                        break
                    t0 = time.perf_counter()
                    try:
                        value = echo.enqueue(i).wait(timeout=5)
                    except Exception as exc:
                        errors.append(repr(exc))
                        continue
                    took.append(time.perf_counter() - t0)
                    if value != i:
                        errors.append(f"got {value!r} for {i}")
            label = f"enqueue() + wait(), {mode}"
            b.row(label, "samples", f"{len(took)}")
            for p in (50, 99):
                b.row(label, f"p{p} ms", fmt_ms(percentile(took, p)))
            from django.conf import settings

            poll = float(settings.JOBQUEUE["POLL_INTERVAL"])
            slow = sum(1 for t in took if t >= 0.5 * poll)
            b.row(label, "pairs taking half a poll interval or more", f"{slow}")
            if errors:
                b.note(f"{label}: {len(errors)} errors: {'; '.join(errors[:5])}")


def scenario_wakeup(b: Bench) -> None:
    for alias in b.layers():
        with b.layer(alias) as mode:
            wakeup(b, mode, redis=alias is not None)


def wakeup(b: Bench, mode: str, *, redis: bool) -> None:
    import random

    from django.utils import timezone

    from bench.benchapp.jobs import echo, noop
    from django_jobqueue.models import Job

    b.reset()
    n = b.size("wakeup")
    samples: list[float] = []
    missing = 0

    def run_one() -> float | None:
        handle = noop.enqueue()
        committed = timezone.now()
        row: dict[str, Any] = {}

        def done() -> bool:
            row.update(Job.objects.filter(job_id=handle.id).values("status", "started_at")[0])
            return row["status"] == "completed"

        if not wait_until(done, b.bound(5), interval=0.002):
            return None
        return (row["started_at"] - committed).total_seconds()

    with b.workers(1):
        if run_one() is None:  # also waits for the worker to start
            run_one()
        # This process also waits for a job once, as a web process serving both kinds of
        # views would: its hub then holds a process channel that it keeps receiving on.
        echo.using(timeout=10).enqueue_and_wait(0)
        for _ in range(10):
            run_one()
            time.sleep(0.02)
        deadline = b.bound(30)
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            time.sleep(random.uniform(0.01, 0.03))  # let the worker go idle again
            latency = run_one()
            if latency is None:
                missing += 1
            else:
                samples.append(latency)
    label = f"wake-up, {mode}"
    b.row(label, "samples", f"{len(samples)}")
    b.row(label, "p50 ms", fmt_ms(percentile(samples, 50)))
    b.row(label, "p99 ms", fmt_ms(percentile(samples, 99)))
    b.row(label, "max ms", fmt_ms(max(samples) if samples else math.nan))
    slow = sum(1 for v in samples if v > 0.1)
    if redis:
        b.row(label, "samples > 100 ms (polled)", f"{slow}")
    b.note(
        f"wake-up, {mode}: one idle worker; time from `noop.enqueue()` returning (autocommit: "
        f"committed) to the job's started_at, which the worker stamps just before its claim "
        f"query ({mode}); 10-30 ms between samples. The producing process has waited for one "
        f"job first (enqueue_and_wait), as a web process would. {missing} samples missed the "
        "5 s bound."
    )


def scenario_floor(b: Bench) -> None:
    """The round trip's database and Redis round trips, one after another in one thread,
    without the library's threads, hub or channel layer: the floor of this design here."""
    import statistics

    from django.conf import settings

    if settings.BENCH_CHANNELS != "redis":
        return
    b.reset()
    steps, totals = measure_floor(b)
    n = len(totals)
    label = "round-trip floor (one thread)"
    b.row(label, "p50 ms, all steps", fmt_ms(percentile(totals, 50)))
    for name, values in steps.items():
        b.row(label, f"p50 ms, {name}", fmt_ms(statistics.median(values)))
    b.note(
        f"round-trip floor: the {len(steps)} round trips of one enqueue_and_wait, {n} times, "
        "one after another in one thread: the library's own SQL (insert_new, claim, "
        "complete_with_results, state) on two connections (the waiter's, durable; the "
        "worker's, synchronous_commit off) and plain redis-py PUBLISH/SUBSCRIBE. No threads, "
        "no hub, no channel layer, no second process to wake: what this design costs on this "
        "machine before any overhead."
    )


#: The floor beside each step of the breakdown (bench/breakdown.py), by the floor's name.
FLOOR_OF = {
    "INSERT + durable commit": "INSERT, durable commit",
    "wake-up: confirm subscribe, send, worker receives": "wake-up (PUBLISH, received)",
    "claim + commit": "claim (UPDATE ... SKIP LOCKED, async commit)",
    "ending statement + commit": "complete + result (async commit)",
    "notification received by the waiter's hub": "finished (PUBLISH, received)",
}


class Breakdown:
    """``--breakdown``: stamps each step of the round trips (bench/breakdown.py) in this
    process and in the worker started inside the block."""

    def __init__(self, b: Bench) -> None:
        from bench import breakdown

        self.b = b
        self.module = breakdown
        self.calls: dict[str, tuple[float, float]] = {}
        self.file = b.logdir / f"breakdown-{os.getpid()}-{b._spawned}.txt"

    def __enter__(self) -> Breakdown:
        self.module.install()
        self.file.write_text("")
        os.environ[self.module.WORKER_FILE] = str(self.file)  # the worker's environment
        return self

    def __exit__(self, *exc: object) -> None:
        os.environ.pop(self.module.WORKER_FILE, None)

    def called(self, t0: float, t1: float) -> None:
        job_id = self.module.last_inserted()
        if job_id is not None:
            self.calls[job_id] = (t0, t1)

    def report(self, label: str) -> None:
        import statistics

        steps = self.module.steps(self.calls, str(self.file))
        floor, _ = measure_floor(self.b, 200)
        total = steps.pop("total")
        left_out = ", ".join(f"{why} {n}" for why, n in self.module.missing.most_common(3))
        self.b.row(
            label,
            "round trips with every stamp",
            f"{len(total)} of {len(self.calls)}" + (f" (left out: {left_out})" if left_out else ""),
        )
        self.b.row(label, "p50 ms, all steps", fmt_ms(percentile(total, 50)))
        for name, values in steps.items():
            beside = FLOOR_OF.get(name)
            text = fmt_ms(statistics.median(values)) if values else "n/a"
            if beside is not None:
                text += f" (floor {fmt_ms(statistics.median(floor[beside]))})"
            self.b.row(label, f"p50 ms, {name}", text)
        self.b.note(
            f"{label}: each step of one round trip from stamps of time.time() at the "
            "library's own step boundaries in both processes (bench/breakdown.py), p50 over "
            "the round trips whose stamps are all there; beside a step, in brackets, its "
            "floor measured just after in this process (the `floor` scenario's step)."
        )


def measure_floor(b: Bench, count: int | None = None) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds of each step of ``count`` floor round trips (see :func:`scenario_floor`),
    and of each whole one."""
    import redis
    from django.conf import settings
    from django.db import connections
    from django.utils import timezone

    from bench.benchapp.jobs import echo
    from django_jobqueue.models import Job

    worker_db = connections["worker"]
    with worker_db.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")  # as the worker's connection
    client = redis.Redis.from_url(settings.REDIS_URL)
    waiter = client.pubsub()
    worker = client.pubsub()
    work = "djqbench.floor.work"
    worker.subscribe(work)
    worker.get_message(timeout=1.0)  # the subscribe confirmation
    jobs, mine = Job.objects, Job.objects.using("worker")
    steps: dict[str, list[float]] = {
        name: []
        for name in (
            "subscribe (SUBSCRIBE, confirmed)",
            "INSERT, durable commit",
            "wake-up (PUBLISH, received)",
            "claim (UPDATE ... SKIP LOCKED, async commit)",
            "complete + result (async commit)",
            "finished (PUBLISH, received)",
            "read the result (SELECT)",
        )
    }
    names = list(steps)
    totals: list[float] = []
    n = count or b.size("roundtrip")
    for i in range(n + 20):
        marks = [time.perf_counter()]
        row = echo._new_job((i,), {}, timezone.now(), notify=True)
        done = f"djqbench.floor.done.{row.job_id}"
        waiter.subscribe(done)
        waiter.get_message(timeout=1.0)
        marks.append(time.perf_counter())
        jobs.insert_new([row])
        marks.append(time.perf_counter())
        client.publish(work, b"w")
        assert worker.get_message(timeout=1.0) is not None
        marks.append(time.perf_counter())
        now = timezone.now()
        (claimed,) = mine.claim(queue=None, limit=1, worker="floor", now=now, lease_until=now)
        marks.append(time.perf_counter())
        mine.complete_with_results(
            [(claimed.id, claimed.attempts)], {claimed.id: i}, now=now, expires_at=now
        )
        marks.append(time.perf_counter())
        client.publish(done, b"f")
        assert waiter.get_message(timeout=1.0) is not None
        marks.append(time.perf_counter())
        state = jobs.state(row.job_id)
        assert state is not None and state.result == i
        marks.append(time.perf_counter())
        waiter.unsubscribe(done)
        waiter.get_message(timeout=1.0)
        if i < 20:
            continue
        for name, start, end in zip(names, marks, marks[1:], strict=False):
            steps[name].append(end - start)
        totals.append(marks[-1] - marks[0])
    waiter.close()
    worker.close()
    client.close()
    return steps, totals


class _Rollback(Exception):
    pass


def claim_sql(queue: str | None) -> str:
    """The SQL of JobQuerySet.claim as the worker sends it (captured, then rolled back)."""
    from datetime import timedelta

    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from django_jobqueue.models import Job

    now = timezone.now()
    with CaptureQueriesContext(connection) as ctx:
        try:
            with transaction.atomic():
                Job.objects.claim(
                    queue=queue,
                    limit=10,
                    worker="bench-explain",
                    now=now,
                    lease_until=now + timedelta(seconds=30),
                )
                raise _Rollback
        except _Rollback:
            pass
    return [q["sql"] for q in ctx.captured_queries if "UPDATE" in q["sql"]][-1]


def explain(sql: str) -> str:
    from django.db import connection, transaction

    prefix = (
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
        if connection.vendor == "postgresql"
        else "EXPLAIN QUERY PLAN "
    )
    lines: list[str] = []
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(prefix + sql)
            for row in cursor.fetchall():
                lines.append(str(row[-1]))
            raise _Rollback  # EXPLAIN ANALYZE of an UPDATE runs it: undo
    except _Rollback:
        pass
    return "\n".join(lines)


def plan_summary(plan: str) -> str:
    """'Index Scan using djq_claim_queue, 0.08 ms' from an EXPLAIN ANALYZE text (PostgreSQL),
    the detail lines from an EXPLAIN QUERY PLAN (SQLite)."""
    import re

    if "Execution Time" not in plan:
        return "; ".join(line.strip() for line in plan.splitlines() if line.strip())
    scans = re.findall(
        r"(Index Only Scan|Index Scan|Bitmap Heap Scan|Seq Scan)"
        r"(?: Backward)?(?: using (\w+))? on \w+ c\b",
        plan,
    )
    parts = [f"{kind} using {index}" if index else kind for kind, index in scans]
    if "Sort Key" in plan:
        parts.append("Sort")
    text = " + ".join(parts) or "?"
    timing = re.search(r"Execution Time: ([\d.]+) ms", plan)
    if timing:
        text += f", {float(timing.group(1)):.2f} ms"
    return text


def is_index_scan(plan: str) -> bool:
    """True when the claim's candidate rows come from an ordered index scan of djq_claim_*
    (not a bitmap scan or a sequential scan followed by a sort of every queued row)."""
    summary = plan_summary(plan) if "Execution Time" in plan else plan
    return ("Index Scan using djq_claim" in summary or "USING INDEX djq_claim" in plan) and (
        "Sort" not in summary and "TEMP B-TREE" not in plan
    )


def drain_some(
    b: Bench,
    n: int,
    extra: tuple[str, ...],
    label: str,
    *,
    bound: float = 60,
    partial_ok: bool = False,
) -> float | None:
    """Start 2 workers (not burst); rate of the first ``n`` jobs they complete, from the DB
    (first started_at to n-th finished_at of the jobs claimed after the workers started)."""
    from django.utils import timezone

    from django_jobqueue.models import Job

    since = timezone.now()
    deadline = b.bound(bound)
    before = b.unfinished()  # nothing is enqueued meanwhile
    with b.workers(2, *extra):
        ok = wait_until(lambda: before - b.unfinished() >= n, deadline, interval=0.1)
    mine = Job.objects.filter(status="completed", started_at__gte=since)
    finished = list(mine.order_by("finished_at").values_list("finished_at", flat=True)[:n])
    first = mine.order_by("started_at").values_list("started_at", flat=True).first()
    if not finished or first is None:
        b.note(f"{label}: no job completed within {bound:.0f}s. " + b.worker_log_tail())
        b.row(label, "drain jobs/s (DB window)", "0")
        return None
    if not ok and not partial_ok:
        b.note(
            f"{label}: only {len(finished)} of {n} completed within {bound:.0f}s. "
            + b.worker_log_tail()
        )
        b.failed = True
    seconds = (finished[-1] - first).total_seconds()
    rate = len(finished) / seconds if seconds > 0 else math.nan
    shown = f"{rate:,.0f}" + ("" if ok else f" ({len(finished)} jobs in {bound:.0f}s)")
    b.row(label, "drain jobs/s (DB window)", shown)
    return rate


def scenario_backlog(b: Bench) -> None:
    """enqueue, claim, drain and round trip on an empty job table, then on one that holds
    ``--backlog-rows`` finished jobs and a queued backlog in another queue (issue #27)."""
    from bench import scale

    size, queued, n = b.size("backlog"), b.size("backlog_queued"), b.size("backlog_drain")
    label = "backlog, loaded"
    pg = b.db == "postgres"
    if not pg:
        b.note("backlog: PostgreSQL only (it loads finished rows with generate_series).")
        return

    # Baseline: nothing else in the table.
    b.reset()
    b.analyze(vacuum=True)
    empty = scale.hot_path(b, n, "backlog, empty table")

    # A fresh install: the job table was never ANALYZEd (autovacuum has not come by yet,
    # switched off here to keep it so) when the backlog arrives.
    b.fresh_table()
    b.autovacuum(False)
    stale: dict[str | None, str] = {}
    try:
        seconds = b.load(queued, queue="backlog", analyze=False, processes=2)
        b.row(label, "finished + queued jobs", f"{size:,} + {queued:,}")
        b.row(label, "load queued: enqueue_many in 2 processes, jobs/s", fmt_rate(queued, seconds))
        stale = {queue: explain(claim_sql(queue)) for queue in ("backlog", None)}
        for queue, plan in stale.items():
            b.row(f"{label}, never ANALYZEd", f"claim plan (queue={queue})", plan_summary(plan))
        seconds = scale.load_finished(size, "default")
        b.row(label, "load finished: INSERT ... SELECT, rows/s", fmt_rate(size, seconds))
    finally:
        b.autovacuum(True)
    # VACUUM (ANALYZE) stands in for autovacuum's first pass over the loaded rows, else it
    # overlaps the first measurement.
    b.analyze(vacuum=True)
    b.checkpoint()
    b.row(label, "job table + indexes MB", table_mb())
    loaded = scale.hot_path(b, n, label)
    plans = {queue: explain(claim_sql(queue)) for queue in ("default", "backlog", None)}
    # Same queue: drain the first n of the backlog itself (priority, id order).
    same = drain_some(b, n, ("--queue", "backlog"), f"{label}, same queue")
    # Workers serving every queue (no --queue): the djq_claim_any index.
    every = drain_some(b, n, (), f"{label}, worker on every queue")

    index = all(is_index_scan(plan) for plan in plans.values())
    b.row(label, "claim plan", "index scan" if index else "NOT an index scan (see notes)")
    for queue, plan in plans.items():
        b.row(label, f"claim plan (queue={queue})", plan_summary(plan))

    # The empty table again (TRUNCATE), so that the loaded figures sit between two empty
    # ones measured minutes apart: the machine's drift shows beside the backlog's effect.
    b.reset()
    b.analyze(vacuum=True)
    again = scale.hot_path(b, n, "backlog, empty table again")
    scale.compare(b, label, empty, again, loaded)
    base = (empty["drain jobs/s"] + again["drain jobs/s"]) / 2
    for where, rate in (("same queue", same), ("worker on every queue", every)):
        if rate:
            b.row(f"{label}, {where}", "drain vs empty (mean)", f"{rate / base:.0%}")
    for queue, plan in stale.items():
        b.note(
            f"EXPLAIN (ANALYZE, BUFFERS) of the claim query, queue={queue!r}, {queued:,} jobs "
            "queued in 'backlog', table never ANALYZEd (fresh install):\n\n```\n" + plan + "\n```"
        )
    for queue, plan in plans.items():
        b.note(
            f"EXPLAIN (ANALYZE, BUFFERS) of the claim query, queue={queue!r}, {size:,} "
            f"finished jobs and {queued:,} queued in 'backlog', after VACUUM (ANALYZE):\n\n"
            "```\n" + plan + "\n```"
        )
    b.note(
        f"backlog: the same figures on an empty job table and on one holding {size:,} "
        f"completed jobs (INSERT ... SELECT over generate_series, queue 'default') and "
        f"{queued:,} queued jobs in queue 'backlog' (enqueue_many in 2 processes, loaded "
        "first on a table never ANALYZEd, as on a fresh install; then VACUUM (ANALYZE) and a "
        "CHECKPOINT). Each in queue 'default': 'enqueue' is `noop.enqueue()` one by one "
        f"({n // 2:,} jobs); 'claim' the p50 of 200 `Job.objects.claim(queue='default', "
        f"limit=10)` rolled back, with {n:,} jobs queued there; 'drain' 2 `runjobworker "
        f"--queue default --concurrency 2` processes (not burst) running those {n:,} jobs, "
        "rate = n / (first started_at to n-th finished_at); 'round trip' the p50 of "
        f"{b.size('roundtrip') // 2} `echo.using(timeout=5).enqueue_and_wait(i)` with one "
        "idle worker on 'default'. 'speed vs empty': rates loaded / empty, times empty / "
        "loaded (100%: as fast; the aim is within 15%). 'same queue': workers with --queue "
        "backlog drain its first jobs; 'every queue': workers without --queue. The empty "
        "table is measured before the load and again after (TRUNCATE): 'speed vs empty' "
        "compares with their mean, and both are shown."
    )


@contextlib.contextmanager
def limits(limits: dict[str, Any], cache: str | None) -> Iterator[None]:
    """``JOBQUEUE["LIMITS"]`` here (enqueue checks the keys) and in workers spawned meanwhile."""
    from django.conf import settings
    from django.test import override_settings

    os.environ["BENCH_LIMITS"] = json.dumps(limits)
    os.environ["BENCH_LIMITS_CACHE"] = cache or ""
    try:
        with override_settings(
            JOBQUEUE={**settings.JOBQUEUE, "LIMITS": limits, "LIMITS_CACHE": cache}
        ):
            yield
    finally:
        os.environ.pop("BENCH_LIMITS", None)
        os.environ.pop("BENCH_LIMITS_CACHE", None)


def scenario_limits(b: Bench) -> None:
    """No-op jobs of one key with ``concurrency`` 4, drained by 2 workers x 8 threads; the
    limits held in the database, then (with Redis) in Redis; then the same jobs with no
    limit, for comparison."""
    from django.conf import settings

    from bench.benchapp.jobs import noop

    n = b.size("limits")
    holders: list[tuple[str, str | None]] = [("database", None)]
    if settings.BENCH_CHANNELS == "redis":
        holders.append(("redis", "limits"))
    for holder, cache in [*holders, ("no limit", None)]:
        label = f"limits, concurrency 4, {holder}"
        b.reset()
        with limits({} if holder == "no limit" else {"bench-api": {"concurrency": 4}}, cache):
            job = noop if holder == "no limit" else noop.using(limit="bench-api")
            for start in range(0, n, 10_000):
                job.enqueue_many([()] * min(10_000, n - start))
            b.analyze()
            started = time.perf_counter()
            with b.workers(2, burst=False, concurrency=8):
                done = wait_until(lambda: b.count() >= n, b.bound(120), interval=0.05)
                finished = time.perf_counter()
        first, last, completed = drain_window()
        suffix = "" if done else f" ({completed:,} of {n:,} before the bound)"
        b.row(label, "jobs/s (from spawn)", fmt_rate(completed, finished - started) + suffix)
        if first and last and completed:
            b.row(label, "jobs/s (DB window)", fmt_rate(completed, (last - first).total_seconds()))
        if not done:
            b.failed = True
            b.note(f"{label}: " + b.worker_log_tail())
    b.note(
        f"limits: {n:,} no-op jobs with limit 'bench-api' ({{'concurrency': 4}}), then the "
        "same without a limit, drained by 2 `runjobworker --concurrency 8` processes (not "
        "burst: a burst worker may exit while a key waits on a slot another worker holds); "
        "limits held in the database (LIMITS_CACHE None) and in Redis (a django-redis cache)."
    )


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scenario_memory(b: Bench) -> None:
    n = b.size("memory")
    early = 5000
    b.reset()
    b.load(n, processes=2)
    deadline = b.bound(200)
    at_early = None
    trace: list[str] = []
    with b.workers(1) as (proc,):
        next_trace = 0
        while time.monotonic() < deadline:
            done = b.count()
            rss = rss_mb(proc.pid)
            if rss is None:
                break
            if at_early is None and done >= early:
                at_early = (done, rss)
            if done >= next_trace:
                trace.append(f"{done:,}: {rss:.1f}")
                next_trace += n // 10
            if done >= n:
                break
            time.sleep(0.25)
        time.sleep(0.5)  # settle: the last flush
        at_end = (b.count(), rss_mb(proc.pid))
        proc_ok = proc.poll() is None
    label = "worker RSS"
    if at_early and at_end[1] is not None and proc_ok:
        short = "" if at_end[0] >= n else f" (bound reached at {at_end[0]:,} jobs)"
        b.row(label, f"MB after {early // 1000}k jobs", f"{at_early[1]:.1f}")
        b.row(label, f"MB after {n // 1000}k jobs", f"{at_end[1]:.1f}{short}")
        b.row(
            label,
            f"growth {early // 1000}k -> {n // 1000}k jobs, MB",
            f"{at_end[1] - at_early[1]:+.1f}{short}",
        )
        if short:
            b.failed = True
    else:
        b.row(label, "growth", "n/a (worker died or bound reached)")
        b.failed = True
    b.note(
        f"memory: one `runjobworker --concurrency 2` process, {n:,} no-op jobs queued up "
        f"front; VmRSS (MB) by completed jobs: {', '.join(trace)}; end {at_end}."
    )


def finished_rows() -> int:
    from django_jobqueue.base import FINISHED
    from django_jobqueue.models import Job

    return Job.objects.filter(status__in=FINISHED).count()


def table_mb() -> str:
    """PostgreSQL: the job table's size with its indexes (MB); SQLite: n/a."""
    from django.db import connection

    from django_jobqueue.models import Job

    if connection.vendor != "postgresql":
        return "n/a"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(%s)", [Job._meta.db_table])
        return f"{cursor.fetchone()[0] / 2**20:.1f}"


def scenario_prune(b: Bench) -> None:
    """Jobs with ``result_ttl=0`` flow through two workers as fast as they drain them (the
    producer keeps at most ``ceiling`` jobs queued, so the claim stays what it is on a short
    queue); the finished rows waiting to be pruned are sampled as they go."""
    from bench.benchapp.jobs import noop
    from django_jobqueue import conf

    n = b.size("prune")
    chunk, ceiling, tick = 2000, 6000, 0.1
    label = "prune, 2 workers x 2 threads"
    b.reset()
    job = noop.using(result_ttl=0)
    job.enqueue_many([()] * chunk)
    b.analyze()  # statistics of a table with jobs in it, as autovacuum would give it
    enqueued = chunk
    samples: list[int] = []
    started = time.perf_counter()
    with b.workers(2, concurrency=2):
        deadline = b.bound(n / 500 + 60)
        while enqueued < n and time.monotonic() < deadline:
            if b.count("queued") < ceiling - chunk:
                job.enqueue_many([()] * min(chunk, n - enqueued))
                enqueued += min(chunk, n - enqueued)
                samples.append(finished_rows())
            else:
                time.sleep(tick)
        done = wait_until(
            lambda: b.count("queued") + b.count("running") == 0, deadline, interval=0.1
        )
        drained = time.perf_counter() - started
        samples.append(finished_rows())
        # What is left once the queue is empty: pruned within about one PRUNE_INTERVAL.
        interval = conf.settings.PRUNE_INTERVAL
        emptied = wait_until(lambda: finished_rows() == 0, b.bound(interval * 2 + 10), 0.25)
        cleared = time.perf_counter() - started
    b.row(label, "jobs (result_ttl 0)", f"{enqueued:,}")
    b.row(label, "drain jobs/s", fmt_rate(enqueued, drained) + ("" if done else " (bound hit)"))
    b.row(label, "finished rows, max while flowing", f"{max(samples):,}")
    b.row(label, "finished rows, median while flowing", f"{int(percentile(samples, 50)):,}")
    b.row(label, "finished rows left after the drain", f"{samples[-1]:,}")
    b.row(
        label,
        "all pruned, s after the drain",
        f"{cleared - drained:.1f}" if emptied else f"not within {cleared - drained:.0f}s",
    )
    b.row(label, "job table + indexes MB at end", table_mb())
    b.note(
        f"prune: {enqueued:,} no-op jobs with result_ttl=0, enqueued {chunk:,} at a time "
        f"whenever fewer than {ceiling - chunk:,} were queued, while 2 `runjobworker "
        "--concurrency 2` processes ran them; COUNT of finished rows sampled at each enqueue. "
        f"Workers prune PRUNE_BATCH={conf.settings.PRUNE_BATCH} rows per statement, back to "
        f"back while batches come back full, else every PRUNE_INTERVAL={interval}s. Finished "
        "rows stay bounded by what finishes between two prunes, not by the jobs run."
    )
    if not (done and emptied):
        b.failed = True


# -- live status: WebSocket watchers on one daphne process ----------------------------------


class Watchers:
    """Raw WebSocket clients (asyncio streams, no client library) on their own loop thread.

    Each socket reads JSON frames and records when a progress message stamped ``"t=<step>"``
    arrived; the scenario knows when it called ``hub().job_progress()`` for that step."""

    def __init__(self, port: int) -> None:
        import asyncio
        import threading

        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received: list[tuple[str, float]] = []  # (stamp, when it arrived)
        self.arrived: dict[str, int] = {}  # stamp -> sockets that got it
        self.first = 0  # sockets that got their first state
        self.closes: dict[int, int] = {}  # close code -> sockets
        self.writers: list[Any] = []
        self.lock = threading.Lock()

    def run(self, coro: Any, timeout: float) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, path: str, gate: Any) -> None:
        import asyncio
        import base64

        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(f"no upgrade: {head[:80]!r}")
        self.writers.append(writer)
        asyncio.get_running_loop().create_task(self._read(reader, writer))

    async def _read(self, reader: Any, writer: Any) -> None:
        import asyncio

        first = True
        while True:
            try:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                elif n == 127:
                    n = int.from_bytes(await reader.readexactly(8), "big")
                payload = await reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            now = time.time()
            opcode = b0 & 0x0F
            if opcode == 8:  # close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                with self.lock:
                    self.closes[code] = self.closes.get(code, 0) + 1
                return
            if opcode == 9:  # ping (daphne pings every 20 s): answer, or it closes the socket
                mask = os.urandom(4)
                masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
                writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)
                continue
            if opcode != 1:  # pong, binary, continuation: not a state
                continue
            state = json.loads(payload)
            with self.lock:
                if first:
                    self.first += 1
                    first = False
                progress = state.get("progress") or {}
                stamp = str(progress.get("message", ""))
                if stamp.startswith("t="):
                    self.received.append((stamp, now))
                    self.arrived[stamp] = self.arrived.get(stamp, 0) + 1

    def open(self, paths: list[str], timeout: float) -> None:
        import asyncio

        async def open_all() -> None:
            gate = asyncio.Semaphore(100)
            await asyncio.gather(*(self._open(path, gate) for path in paths))

        self.run(open_all(), timeout)

    def close(self) -> None:
        async def close_all() -> None:
            for writer in self.writers:
                writer.close()

        with contextlib.suppress(Exception):
            self.run(close_all(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def _sockets_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
    return count


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def scenario_watchers(b: Bench) -> None:
    """1,000 WebSocket watchers of one job, then 1,000 watchers of 1,000 jobs, on one daphne
    process; the bench process plays the worker (UPDATE progress, then job_progress)."""
    import resource

    from django.conf import settings
    from django.test import override_settings

    from bench.benchapp.jobs import echo
    from django_jobqueue.models import Job
    from django_jobqueue.notifications import hub, reset_hub

    if settings.BENCH_CHANNELS != "redis":
        b.note("watchers: skipped, it needs Redis (BENCH_CHANNELS=redis)")
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    n = 200 if b.quick else 1000
    steps = 10 if b.quick else 20
    interval = 0.05
    b.reset()
    port = free_port()
    log = open(b.logdir / f"daphne-{b.db}.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "bench.asgi:application",
        ],
        cwd=ROOT,
        env=worker_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    b.procs.append(server)
    import socket as socket_module

    def answers() -> bool:
        with contextlib.suppress(OSError), socket_module.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    if not wait_until(answers, b.bound(30)):
        raise RuntimeError("daphne did not start")
    pg = 5432 if b.db == "postgres" else -1
    with override_settings(JOBQUEUE={**settings.JOBQUEUE, "PROGRESS_INTERVAL": interval}):
        reset_hub()
        try:
            for label, jobs in (
                (f"{n} watchers of 1 job", 1),
                (f"{n} watchers of {n} jobs", n),
            ):
                b.reset()
                handles = echo.enqueue_many([(i,) for i in range(jobs)])
                ids = [h.id for h in handles]
                tokens = [h.watch_token() for h in handles]
                clients = Watchers(port)
                try:
                    rss_before = _rss_mb(server.pid)
                    clients.open(
                        [f"/ws/jobqueue/jobs/{tokens[i % jobs]}/" for i in range(n)],
                        timeout=max(10, b.bound(120) - time.monotonic()),
                    )
                    if not wait_until(lambda c=clients: c.first >= n, b.bound(60)):
                        b.note(f"watchers, {label}: only {clients.first} of {n} got a first state")
                    redis_conns = _sockets_to(server.pid, 6379)
                    pg_conns = _sockets_to(server.pid, pg)
                    called: dict[str, float] = {}
                    for step in range(steps):
                        started = time.monotonic()
                        stamp = f"t={step}"
                        value = {"current": step + 1, "total": steps, "message": stamp}
                        Job.objects.filter(job_id__in=ids).update(progress=value)
                        called[stamp] = time.time()
                        hub().job_progress(ids)
                        if not wait_until(
                            lambda s=stamp, c=clients: c.arrived.get(s, 0) >= n, b.bound(30), 0.002
                        ):
                            b.note(
                                f"watchers, {label}: step {step} reached "
                                f"{clients.arrived.get(stamp, 0)} of {n} sockets"
                            )
                        # Pace the steps a little over PROGRESS_INTERVAL, so none is throttled.
                        time.sleep(max(0.0, started + interval * 1.5 - time.monotonic()))
                    rss_after = _rss_mb(server.pid)
                    with clients.lock:
                        delivered = [
                            now - called[stamp]
                            for stamp, now in clients.received
                            if stamp in called
                        ]
                    sent = len(called)
                    b.row(f"watchers, {label}", "messages", f"{len(delivered)} ({sent} steps)")
                    b.row(f"watchers, {label}", "p50 ms", fmt_ms(percentile(delivered, 50)))
                    b.row(f"watchers, {label}", "p99 ms", fmt_ms(percentile(delivered, 99)))
                    b.row(
                        f"watchers, {label}",
                        "daphne RSS MB",
                        f"{rss_before:.0f} -> {rss_after:.0f}",
                    )
                    b.row(
                        f"watchers, {label}",
                        "Redis / PostgreSQL conns",
                        f"{redis_conns} / {pg_conns}",
                    )
                    refused = sum(c for code, c in clients.closes.items() if code != 1000)
                    b.row(f"watchers, {label}", "closed early (1013 etc.)", str(refused))
                finally:
                    clients.close()
        finally:
            reset_hub()
            b.stop(server)
    b.note(
        f"watchers: one `daphne bench.asgi:application` process (RedisChannelLayer); the bench "
        f"process plays the worker: {steps} steps, each an UPDATE of the jobs' progress, then "
        f"`hub().job_progress(ids)` (PROGRESS_INTERVAL {interval}s); latency from that call to "
        "the raw WebSocket client's receipt of the step's state. Conns: daphne's "
        "established TCP connections to Redis and PostgreSQL after all sockets opened."
    )


#: The run time of one job of the cpu scenario, in seconds.
CPU_JOB_SECONDS = 0.02


def spin_rounds(seconds: float) -> int:
    """How many rounds of :func:`bench.benchapp.jobs.spin` take ``seconds`` here (best of 5)."""
    from bench.benchapp.jobs import spin

    probe = 200_000
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        spin.func(probe)
        best = min(best, time.perf_counter() - started)
    return max(1, round(probe * seconds / best))


def scenario_cpu(b: Bench) -> None:
    """CPU-bound jobs: one process (its threads share the GIL), two processes started by
    hand, and ``runjobworker --processes 2`` (one supervisor, two worker processes)."""
    from bench.benchapp.jobs import spin

    n = b.size("cpu")
    rounds = spin_rounds(CPU_JOB_SECONDS)
    runs = [
        ("1 worker x 2 threads", 1, ("--concurrency", "2")),
        ("2 workers x 1 thread", 2, ("--concurrency", "1")),
        ("--processes 2 x 1 thread", 1, ("--processes", "2", "--concurrency", "1")),
    ]
    load = os.getloadavg()[0]
    for label, nworkers, extra in runs:
        b.reset()
        spin.enqueue_many([(rounds,)] * n)
        started = time.perf_counter()
        with b.workers(nworkers, *extra, burst=True, concurrency=None) as procs:
            done = wait_until(lambda: b.count() >= n, b.bound(120), interval=0.05)
            finished = time.perf_counter()
            wait_until(lambda: all(p.poll() is not None for p in procs), b.bound(15))
        first, last, completed = drain_window()
        name = f"cpu-bound 20 ms jobs, {label}"
        suffix = "" if done else f" ({completed} of {n} before the bound)"
        b.row(name, "jobs/s (from spawn)", fmt_rate(completed, finished - started) + suffix)
        if first and last and completed:
            b.row(name, "jobs/s (DB window)", fmt_rate(completed, (last - first).total_seconds()))
        if not done:
            b.failed = True
    b.note(
        f"cpu: {n} jobs of {rounds:,} rounds of a pure-Python loop (about "
        f"{CPU_JOB_SECONDS * 1000:.0f} ms each, calibrated in the benchmark's process), "
        "bulk-enqueued, then `runjobworker --burst -v 0` with the options of each row; "
        f"os.cpu_count() {os.cpu_count()}, 1-minute load average {load:.2f} before the first "
        "row. 'from spawn' includes starting the interpreters (with --processes, the "
        "supervisor's then its children's), 'DB window' is first started_at to last "
        "finished_at."
    )


def scenario_soak(b: Bench) -> None:
    from bench import scale

    scale.scenario_soak(b)


SCENARIO_FUNCS: dict[str, Callable[[Bench], None]] = {
    "enqueue": scenario_enqueue,
    "enqueue_many": scenario_enqueue_many,
    "drain": scenario_drain,
    "roundtrip": scenario_roundtrip,
    "chain": scenario_chain,
    "enqueue_wait": scenario_enqueue_wait,
    "floor": scenario_floor,
    "wakeup": scenario_wakeup,
    "backlog": scenario_backlog,
    "memory": scenario_memory,
    "limits": scenario_limits,
    "prune": scenario_prune,
    "watchers": scenario_watchers,
    "cpu": scenario_cpu,
    "soak": scenario_soak,
}


# -- profiling -------------------------------------------------------------------------------


def profile_top(profiler: Any, name: str, limit: int = 30) -> str:
    import io
    import pstats

    RESULTS.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(RESULTS / f"profile-{name}.prof"))
    text = []
    for key in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(key).print_stats(limit)
        text.append(stream.getvalue())
    out = "\n".join(text)
    (RESULTS / f"profile-{name}.txt").write_text(out)
    return out


def profile_roundtrip(b: Bench) -> None:
    import cProfile

    from bench.benchapp.jobs import echo

    b.reset()
    with b.workers(1):
        echo.using(timeout=20).enqueue_and_wait(-1)
        waiting = echo.using(timeout=5)
        for i in range(50):
            waiting.enqueue_and_wait(i)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for i in range(500):
            waiting.enqueue_and_wait(i)
        profiler.disable()
        elapsed = time.perf_counter() - started
    print(profile_top(profiler, "roundtrip"))
    print(
        f"500 round trips in {elapsed:.2f}s ({elapsed * 2:.2f} ms each, under cProfile); "
        f"written to {RESULTS}/profile-roundtrip.*"
    )


def profile_worker(b: Bench) -> None:
    import cProfile

    from django_jobqueue.worker import Worker

    n = 20_000
    b.reset()
    b.load(n)
    worker = Worker(burst=True, concurrency=2)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    worker.run()
    profiler.disable()
    elapsed = time.perf_counter() - started
    print(profile_top(profiler, "worker"))
    print(
        f"worker main thread: {worker.processed} jobs in {elapsed:.2f}s under cProfile; "
        f"written to {RESULTS}/profile-worker.*"
    )


# -- child entry -----------------------------------------------------------------------------


def child_main(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.core.management import call_command

    bench = Bench(
        args.db,
        args.quick,
        args.budget or 600,
        minutes=args.minutes,
        backlog=args.backlog_rows or 0,
        reloptions=args.reloptions or "",
    )
    atexit.register(bench.kill_all)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    ok = True
    try:
        call_command("migrate", verbosity=0, interactive=False)
        if args.profile:
            {"roundtrip": profile_roundtrip, "worker": profile_worker}[args.profile](bench)
        for name in args.only or []:
            if bench.left() < 10:
                bench.note(f"{name}: skipped, the run's time budget is used up")
                ok = False
                continue
            # Let the machine settle (the database finishing the previous scenario's work,
            # other people's processes) for up to 2 s; note it if it stays busy.
            settle_until = time.monotonic() + 2
            while (busy := cpu_busy(0.5)) > 0.3 and time.monotonic() < settle_until:
                pass
            print(f"-- {name} (machine CPU busy before: {busy:.0%})", flush=True)
            if busy > 0.3:
                bench.note(
                    f"{name}: the machine was still {busy:.0%} busy with other work when it "
                    "started; its figures are less reliable."
                )
            started = time.monotonic()
            try:
                SCENARIO_FUNCS[name](bench)
            except Exception as exc:  # report and go on with the next scenario
                import traceback

                traceback.print_exc()
                bench.note(f"{name}: failed with {exc!r}")
                ok = False
            finally:
                bench.kill_all()
            print(f"   ({time.monotonic() - started:.1f}s)", flush=True)
    finally:
        bench.kill_all()
        with contextlib.suppress(Exception):
            bench.flush_redis()
        if args.out:
            Path(args.out).write_text(
                json.dumps(
                    {"rows": bench.rows, "notes": bench.notes, "ok": ok and not bench.failed}
                )
            )
    return 0 if ok and not bench.failed else 1


if __name__ == "__main__":
    sys.exit(main())
