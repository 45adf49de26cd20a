"""One queue, one run: enqueue, drain, round trip; the figures as JSON.

    python -m bench.peerapps.driver NAME --out FILE [--jobs N] [--roundtrips M]

Started by ``bench/peers.py`` with the queue's interpreter, the repository as the working
directory and on ``PYTHONPATH``, and in the environment: ``PEERS_PG_URL`` (the queue's own
PostgreSQL database, freshly created), ``PEERS_REDIS_URL`` (its own Redis database, flushed),
``PEERS_BARE_URL`` (a database for the bare commit rate) and ``PEERS_LOG_DIR``.

1. Bare commit rate: ``INSERT`` of one row + ``COMMIT``, one by one through psycopg
   (autocommit, the connection settings Django uses), into a one-table database.
2. Enqueue one by one: 20 warm-up jobs, then ``--jobs`` timed, no worker running.
3. Drain: the worker commands start (the queue's default command and concurrency); from
   their launch to the last job's mark, and to the first job's mark ("start to first job").
4. Round trip: the workers stop; one worker command starts idle; one call to wait for it,
   20 warm-up calls, then ``--roundtrips`` sequential enqueue-and-wait calls (bounded in time).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.peerapps import mark

ROOT = Path(__file__).resolve().parent.parent.parent

#: NAME -> module of bench.peerapps. The django-jobqueue variants read their knobs from the
#: environment (bench/peers.py sets them).
MODULES = {
    "jobqueue": "djq",
    "jobqueue-pubsub": "djq",
    "jobqueue-c4": "djq",
    "celery": "celery_app",
    "dramatiq": "dramatiq_app",
    "huey": "huey_app",
    "procrastinate": "procrastinate_app",
    "django-tasks-db": "tasksdb",
}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def bare_commit_rate(url: str, n: int) -> float:
    """Commits/s of one-row INSERTs in autocommit through psycopg (the disk's limit)."""
    import psycopg

    with psycopg.connect(url.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bare_commit")
        conn.execute(
            "CREATE TABLE bare_commit (id bigserial PRIMARY KEY, at timestamptz NOT NULL, "
            "payload text NOT NULL)"
        )
        for _ in range(20):
            conn.execute("INSERT INTO bare_commit (at, payload) VALUES (now(), 'warm-up')")
        started = time.perf_counter()
        for _ in range(n):
            conn.execute("INSERT INTO bare_commit (at, payload) VALUES (now(), 'job')")
        return n / (time.perf_counter() - started)


class Workers:
    """Worker commands started in their own process groups; stopped (TERM, then KILL)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = Path(os.environ.get("PEERS_LOG_DIR") or tempfile.gettempdir())
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, commands: list[list[str]], env: dict[str, str], phase: str) -> None:
        for i, argv in enumerate(commands):
            log = (self.logs / f"{self.name}-{phase}-{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: a worker's children stop with it
                )
            )
            log.close()

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group: children too
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)
        self.procs = []

    @contextlib.contextmanager
    def running(self, commands: list[list[str]], env: dict[str, str], phase: str) -> Iterator[None]:
        try:
            self.start(commands, env, phase)
            yield
        finally:
            self.stop()

    def dead(self) -> list[int]:
        return [p.returncode for p in self.procs if p.poll() is not None]


def run(name: str, jobs: int, roundtrips: int, rt_bound: float) -> dict[str, Any]:
    queue = importlib.import_module(f"bench.peerapps.{MODULES[name]}")
    out: dict[str, Any] = {"name": name, "notes": []}
    out["bare_rate"] = bare_commit_rate(os.environ["PEERS_BARE_URL"], jobs)
    queue.setup()
    out["version"] = queue.version()
    out["started_as"] = queue.describe()
    workers = Workers(name)
    marks = Path(tempfile.mkdtemp(prefix=f"peers-{name}-"))
    env = {**os.environ, "PEERS_MARK_DIR": str(marks / "drain")}
    (marks / "drain").mkdir()
    (marks / "roundtrip").mkdir()
    os.environ["PEERS_MARK_DIR"] = str(marks / "roundtrip")  # eager paths, if any, mark there
    try:
        # -- enqueue one by one, no worker running
        for _ in range(20):
            queue.enqueue()
        deadline = time.monotonic() + 60
        done = 0
        started = time.perf_counter()
        while done < jobs and time.monotonic() < deadline:
            queue.enqueue()
            done += 1
        out["enqueue_rate"] = done / (time.perf_counter() - started)
        total = done + 20
        # -- drain: from launching the worker commands to the last job
        launched = time.time()
        with workers.running(queue.worker_commands(drain=True), env, "drain"):
            deadline = time.monotonic() + 180
            while mark.count(marks / "drain") < total and time.monotonic() < deadline:
                if len(workers.dead()) == len(workers.procs):
                    break
                time.sleep(0.02)
        stamps = mark.times(marks / "drain")
        if len(stamps) >= total:
            out["drain_rate"] = total / (stamps[-1] - launched)
        else:
            out["notes"].append(f"drain: {len(stamps)} of {total} jobs ran before the bound")
        if stamps:
            out["first_job_s"] = stamps[0] - launched
        if len(stamps) >= total and stamps[-1] > stamps[0]:
            out["steady_rate"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        out["drained"] = len(stamps)
        out["drain_jobs"] = total
        # -- round trip with one idle worker command
        env["PEERS_MARK_DIR"] = str(marks / "roundtrip")
        samples: list[float] = []
        with workers.running(queue.worker_commands(drain=False), env, "roundtrip"):
            queue.roundtrip(timeout=60)  # the worker's start-up
            for _ in range(20):
                queue.roundtrip(timeout=10)
            deadline = time.monotonic() + rt_bound
            while len(samples) < roundtrips and time.monotonic() < deadline:
                started = time.perf_counter()
                queue.roundtrip(timeout=10)
                samples.append(time.perf_counter() - started)
        out["rt_n"] = len(samples)
        out["rt_p50_ms"] = percentile(samples, 50) * 1000
        out["rt_p99_ms"] = percentile(samples, 99) * 1000
        if len(samples) < roundtrips:
            out["notes"].append(
                f"round trip: {len(samples)} of {roundtrips} calls in the {rt_bound:.0f} s bound"
            )
    finally:
        workers.stop()
        queue.teardown()
        shutil.rmtree(marks, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("name", choices=sorted(MODULES))
    parser.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--roundtrips", type=int, default=300)
    parser.add_argument("--rt-bound", type=float, default=60.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop workers
    result = run(args.name, args.jobs, args.roundtrips, args.rt_bound)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
