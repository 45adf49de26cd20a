#!/usr/bin/env python
"""Side by side: django-jobqueue and its peers, each started as its quickstart starts it.

    python bench/peers.py [--quick] [--runs 3] [--only jobqueue,celery,...]

Run it from the repository root with the project's virtualenv (``.venv/bin/python``). It
makes ``.venv-peers`` (git-ignored; ``PEERS_VENV`` names another directory) with Celery,
Dramatiq, Huey, Procrastinate, django-tasks-db and django-jobqueue's own runtime
dependencies (the pinned versions of ``PEER_REQUIREMENTS``) on first use: the peers never
enter this project's dependencies, and every queue runs on the same Python, Django, redis-py
and psycopg, django-jobqueue from this checkout with what ``pip install
"django-jobqueue[redis,postgres]"`` brings (not the development extras, such as the
OpenTelemetry SDK that redis-py imports when it is there). Sources are compiled to bytecode
first, as an install does. Then, for every run, every queue (in an order
that rotates between runs, so a noisy minute does not always hit the same one): a fresh
PostgreSQL database and/or Redis database of its own, and one driver process
(``bench/peerapps/driver.py``, with the queue's interpreter) that measures the bare one-row
commit rate, enqueue one by one, the drain from launching the worker commands, worker start
to first job, and the round trip. The table of medians is printed and written to
``bench/results/peers.md``, with the machine's load average and busy share (the machines
are shared: compare ratios); worker logs go to ``bench/results/peers-logs/``.

Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust; ``PEERS_PG`` overrides the server
URL) and Redis at 127.0.0.1:6379 (``PEERS_REDIS``). It drops and recreates the databases
``djq_peers_*`` (``PEERS_DB_PREFIX``) and flushes Redis databases 10 to 13 (or the one
``PEERS_REDIS_DB``). Not part of CI.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERS_VENV = Path(os.environ.get("PEERS_VENV") or ROOT / ".venv-peers")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import cpu_busy  # noqa: E402

#: What .venv-peers gets, pinned so that two runs compare the same peers (the table prints the
#: versions used); the published figures (docs/reference/comparison.md) name these versions.
#: Changing a pin reinstalls the venv on the next run (a stamp holds the list's hash).
PEER_REQUIREMENTS = [
    "celery[redis]==5.7.0",
    "kombu==5.7.0",
    "dramatiq[redis]==2.2.1",
    "huey==3.5.4",
    "redis==8.2.0",
    "procrastinate==3.10.0",
    "psycopg[binary]==3.3.9",
    "django-tasks-db[compat]==0.13.0",
    "django-tasks==0.12.0",
    "Django==5.2.20",
    # django-jobqueue[redis,postgres] from this checkout (on PYTHONPATH), and the bench
    # settings' dj-database-url.
    "channels==4.3.2",
    "channels-redis==4.3.0",
    "croniter==7.0.0",
    "dj-database-url==3.1.2",
]

#: The PostgreSQL databases' prefix (``PEERS_DB_PREFIX``), and one Redis database for every
#: queue (``PEERS_REDIS_DB``; flushed before each queue's run) instead of 10 to 13: two runs
#: side by side on one server (or beside a CI run) must not drop each other's data.
_PREFIX = os.environ.get("PEERS_DB_PREFIX") or "djq_peers"
_ONE_REDIS_DB = os.environ.get("PEERS_REDIS_DB")


def _redis_db(number: int) -> int:
    return int(_ONE_REDIS_DB) if _ONE_REDIS_DB else number


#: name -> (own PostgreSQL database or None, own Redis database number or None)
QUEUES: dict[str, tuple[str | None, int | None]] = {
    "jobqueue": (f"{_PREFIX}_jobqueue", _redis_db(10)),
    "jobqueue-pubsub": (f"{_PREFIX}_jobqueue", _redis_db(10)),
    "jobqueue-c4": (f"{_PREFIX}_jobqueue", _redis_db(10)),
    "celery": (None, _redis_db(11)),
    "dramatiq": (None, _redis_db(12)),
    "huey": (None, _redis_db(13)),
    "procrastinate": (f"{_PREFIX}_procrastinate", None),
    "django-tasks-db": (f"{_PREFIX}_tasksdb", None),
}
LABELS = {
    "jobqueue": "django-jobqueue, defaults",
    "jobqueue-pubsub": "django-jobqueue, RedisPubSubChannelLayer",
    "jobqueue-c4": "django-jobqueue, `--concurrency 4`",
}
BARE_DB = f"{_PREFIX}_bare"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 jobs, 100 round trips")
    parser.add_argument("--runs", type=int, default=3, help="runs of every queue (median)")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(QUEUES))
    parser.add_argument("--jobs", type=int, help="jobs enqueued and drained (default 3,000)")
    parser.add_argument("--roundtrips", type=int, help="measured round trips (default 300)")
    args = parser.parse_args()
    # SIGTERM as SystemExit, so the running driver is stopped (and stops its workers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(QUEUES)
    unknown = [n for n in names if n not in QUEUES]
    if unknown:
        parser.error(f"unknown queue(s) {', '.join(unknown)}; choose from {', '.join(QUEUES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    jobs = args.jobs or (1000 if args.quick else 3000)
    roundtrips = args.roundtrips or (100 if args.quick else 300)
    rt_bound = 20.0 if args.quick else 60.0
    pg = os.environ.get("PEERS_PG", "postgres://postgres@127.0.0.1:5432")
    redis_url = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379")
    ensure_peer_venv()
    compile_sources()
    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "peers-logs"
    logs.mkdir(exist_ok=True)
    recreate_database(pg, BARE_DB)
    started = time.time()
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            busy = cpu_busy(1.0)
            print(f"run {run + 1}/{args.runs}: {name} (machine {busy:.0%} busy) ...", flush=True)
            result = run_queue(name, pg, redis_url, jobs, roundtrips, rt_bound, logs, run)
            if not result["ok"]:
                # A shared machine: another process may have restarted PostgreSQL or Redis
                # under the run. Once, when both answer again.
                print("   ", summary(result), "- once more", flush=True)
                wait_for_services(pg, redis_url, bound=60)
                notes = result["notes"]
                result = run_queue(name, pg, redis_url, jobs, roundtrips, rt_bound, logs, run)
                result["notes"] += [f"failed once ({'; '.join(notes)}), ran again"]
            result["busy"] = busy
            results[name].append(result)
            print("   ", summary(result), flush=True)
    command = "python bench/peers.py " + " ".join(sys.argv[1:])
    loads = (load_before, os.getloadavg())
    text = render(results, command.strip(), time.time() - started, jobs, roundtrips, loads)
    (RESULTS / "peers.md").write_text(text)
    print()
    print(text)
    return 0 if all(r.get("ok") for rs in results.values() for r in rs) else 1


def ensure_peer_venv() -> None:
    """Create ``.venv-peers`` and install the peers, once per requirement list."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".peers-requirements"
    wanted = hashlib.sha256("\n".join(PEER_REQUIREMENTS).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return
    base = getattr(sys, "_base_executable", sys.executable)
    if not python.exists():
        print(f"creating {PEERS_VENV.name} with {base} ...", flush=True)
        subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    print(f"installing the peers into {PEERS_VENV.name} ...", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    stamp.write_text(wanted)


def compile_sources() -> None:
    """Bytecode for this checkout's package and the bench, as an install would have (with
    ``PYTHONDONTWRITEBYTECODE`` set, every start would compile them again)."""
    for folder in ("django_jobqueue", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def admin_url(pg: str) -> str:
    return urlparse(pg)._replace(path="/postgres").geturl().replace("postgres://", "postgresql://")


def recreate_database(pg: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url(pg), autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def wait_for_services(pg: str, redis_url: str, bound: float) -> None:
    """Until PostgreSQL and Redis both answer, for at most ``bound`` seconds."""
    import psycopg
    import redis

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(admin_url(pg), connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            client = redis.Redis.from_url(redis_url, socket_timeout=5)
            try:
                client.ping()
            finally:
                client.close()
            return
        except (psycopg.Error, redis.RedisError):
            time.sleep(1)


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def run_queue(
    name: str,
    pg: str,
    redis_base: str,
    jobs: int,
    roundtrips: int,
    rt_bound: float,
    logs: Path,
    run: int,
) -> dict[str, Any]:
    database, redis_db = QUEUES[name]
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the peers' installs have their bytecode
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        PEERS_BARE_URL=f"{pg.rstrip('/')}/{BARE_DB}",
        PEERS_LOG_DIR=str(logs),
    )
    if database:
        recreate_database(pg, database)
        env["PEERS_PG_URL"] = f"{pg.rstrip('/')}/{database}"
    if redis_db is not None:
        env["PEERS_REDIS_URL"] = f"{redis_base.rstrip('/')}/{redis_db}"
        flush_redis(env["PEERS_REDIS_URL"])
    if name.startswith("jobqueue"):
        env.update(
            DJANGO_SETTINGS_MODULE="bench.peerapps.djq_settings",
            BENCH_DB="postgres",
            BENCH_CHANNELS="redis",
            DATABASE_URL=env["PEERS_PG_URL"],
            REDIS_URL=env["PEERS_REDIS_URL"],
            BENCH_REDIS_PREFIX=f"djqpeers{os.getpid()}r{run}:",
            BENCH_CHANNEL_LAYER="pubsub" if name == "jobqueue-pubsub" else "default",
        )
        env.pop("BENCH_POLL_INTERVAL", None)
        if name == "jobqueue-c4":
            env["PEERS_DJQ_CONCURRENCY"] = "4"
    elif name == "django-tasks-db":
        env["DJANGO_SETTINGS_MODULE"] = "bench.peerapps.tasksdb_settings"
    python = str(PEERS_VENV / "bin" / "python")
    out = Path(tempfile.mkstemp(prefix=f"peers-{name}-", suffix=".json")[1])
    cmd = [python, "-m", "bench.peerapps.driver", name, "--out", str(out)]
    cmd += ["--jobs", str(jobs), "--roundtrips", str(roundtrips), "--rt-bound", str(rt_bound)]
    log = (logs / f"{name}-driver.log").open("ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        stop_driver(proc)
    except BaseException:  # Ctrl-C, or SIGTERM (raised as SystemExit in main)
        stop_driver(proc)
        raise
    finally:
        log.close()
    try:
        result: dict[str, Any] = json.loads(out.read_text() or "{}")
    except (OSError, ValueError):
        result = {}
    out.unlink(missing_ok=True)
    result.setdefault("notes", [])
    result["ok"] = proc.returncode == 0 and "rt_p50_ms" in result
    if proc.returncode != 0:
        result["notes"].append(
            f"driver exited with code {proc.returncode}; see bench/results/peers-logs/"
            f"{name}-driver.log"
        )
    return result


def stop_driver(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # the driver stops its workers on SIGTERM
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(r: dict[str, Any]) -> str:
    if not r.get("ok"):
        return "FAILED: " + "; ".join(r.get("notes", []))
    return (
        f"bare {r['bare_rate']:,.0f}/s, enqueue {r['enqueue_rate']:,.0f}/s, "
        f"drain {r.get('drain_rate', float('nan')):,.0f}/s from spawn, "
        f"{r.get('steady_rate', float('nan')):,.0f}/s steady, "
        f"start-up {r.get('first_job_s', float('nan')):.2f} s, "
        f"round trip {r['rt_p50_ms']:.2f} / {r['rt_p99_ms']:.2f} ms"
    )


def _median(rs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rs if r.get("ok") and r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "failed" if value is None else format(value, spec)


def render(
    results: dict[str, list[dict[str, Any]]],
    command: str,
    elapsed: float,
    jobs: int,
    roundtrips: int,
    loads: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> str:
    head = (
        "| queue | round trip p50 / p99, ms | enqueue one by one, jobs/s | bare commits/s, "
        "same run | enqueue / bare | worker start-up s (spawn -> 1st job) | drain from spawn "
        "/ steady, jobs/s | runs |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    started_as: list[str] = []
    notes: list[str] = []
    for name, rs in results.items():
        for r in rs:
            if r.get("ok") and r.get("enqueue_rate") and r.get("bare_rate"):
                r["ratio"] = r["enqueue_rate"] / r["bare_rate"]
        ok = [r for r in rs if r.get("ok")]
        version = ok[0]["version"] if ok else name
        label = LABELS.get(name, version)
        if name.startswith("jobqueue") and ok:
            label += f" ({version.split(' (')[0]})"
        p50, p99 = _median(rs, "rt_p50_ms"), _median(rs, "rt_p99_ms")
        cells = [
            label,
            f"{_fmt(p50, '.2f')} / {_fmt(p99, '.2f')}",
            _fmt(_median(rs, "enqueue_rate"), ",.0f"),
            _fmt(_median(rs, "bare_rate"), ",.0f"),
            # Against the bare commit only where the queue's enqueue is a PostgreSQL commit.
            _fmt(_median(rs, "ratio"), ".2f") + "x" if QUEUES[name][0] else "(Redis)",
            _fmt(_median(rs, "first_job_s"), ".2f"),
            f"{_fmt(_median(rs, 'drain_rate'), ',.0f')} / "
            f"{_fmt(_median(rs, 'steady_rate'), ',.0f')}",
            f"{len(ok)}/{len(rs)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if ok:
            started_as.append(f"- {label}: {ok[0]['started_as']}")
        for i, r in enumerate(rs, 1):
            for note in r.get("notes", []):
                notes.append(f"- {name}, run {i}: {note}")
    busy = [r["busy"] for rs in results.values() for r in rs if "busy" in r]
    machine = (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {elapsed:.0f} s; the machine was "
        f"{min(busy):.0%}-{max(busy):.0%} busy (other work) in the second before each measurement"
        if busy
        else f"{os.cpu_count()} cores"
    )
    if loads:
        before, after = loads
        machine += (
            f"; load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in before)} at the start, "
            f"{'/'.join(f'{v:.1f}' for v in after)} at the end: a shared machine, compare ratios"
        )
    out = [
        "# django-jobqueue and its peers, side by side",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}.  ",
        f"Medians of each queue's runs. {jobs:,} no-op jobs (+20 warm-up) enqueued one by one "
        f"with no worker running, then drained from launching the worker commands (start-up: "
        f"from the launch to the first job's end; steady: from the first job's end to the "
        f"last's); {roundtrips} sequential enqueue-and-wait calls with one idle worker command.",
        "",
        *lines,
        "",
        "How each queue was started:",
        "",
        *started_as,
        "",
    ]
    if notes:
        out += ["Notes:", "", *notes, ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
