"""``scripts/chaos``: worker hosts in network namespaces, overlapping faults on a seeded
schedule, then the invariants (``check.py``). Must run as root (namespaces, packet filter,
``tc``, restarting PostgreSQL and Redis).

The last line is ``chaos: J jobs, L lost, D duplicate runs (≤ F faults), W wrong values,
seed S``; the exit status is 1 when an invariant broke (its ledger rows are printed above).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import faults as fault_schedule
from . import netns, services
from .faults import Fault

ROOT = Path(__file__).resolve().parents[2]
SKEW_PATH = Path(__file__).resolve().parent / "skew"
DB_NAME = os.environ.get("CHAOS_DB_NAME", "djq_chaos")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class WorkerHost:
    """One worker process in a host's namespace, restartable with a skewed clock or the
    previous release's code."""

    def __init__(self, host: netns.Host, workdir: Path, env: dict[str, str], cwd: Path) -> None:
        self.host = host
        self.cwd = cwd
        self.workdir = workdir
        self.env = env
        self.overrides: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.RLock()

    def start(self) -> None:
        env = {**self.env, "CHAOS_HOST": f"h{self.host.index}", **self.overrides}
        if "DJQ_CLOCK_SKEW" in self.overrides:
            env["PYTHONPATH"] = f"{SKEW_PATH}{os.pathsep}{env['PYTHONPATH']}"
        with (self.workdir / f"h{self.host.index}.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.host.exec_prefix(), sys.executable, "-m", "django", "runjobworker",
                 "--concurrency", "4"],
                cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop_gracefully(self, timeout: float = 30.0) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        with self.lock:
            self.stop_gracefully()
            self.start()


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed
        self.lease = float(args.lease)
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts = [netns.Host(i) for i in range(args.hosts)]
        self.producer_host = netns.Host(args.hosts)
        self.workers: list[WorkerHost] = []
        self.applied: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.producer: subprocess.Popen[bytes] | None = None
        self.stop_file = self.workdir / "stop-producer"
        self.producer_log = self.workdir / "producer.jsonl"
        self.control = self.workdir / "delays.json"
        # --package-from: the workers and the producer import django_jobqueue from there
        # (another version of the package under the same chaos: to show what a fix fixed).
        # ``python -m`` puts the working directory first on sys.path: run from there.
        self.cwd = Path(args.package_from).resolve() if args.package_from else ROOT
        self.pythonpath = os.pathsep.join(
            [*([str(Path(args.package_from).resolve())] if args.package_from else []), str(ROOT)]
        )

    def base_env(self, host: netns.Host) -> dict[str, str]:
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJQ_", "CHAOS_"))},
            "DJANGO_SETTINGS_MODULE": "tests.chaos.settings",
            "PYTHONPATH": self.pythonpath,
            "PYTHONUNBUFFERED": "1",
            "CHAOS_SERVICES_HOST": host.gateway,
            "CHAOS_DB_NAME": DB_NAME,
            "CHAOS_LEASE_SECONDS": str(self.lease),
            "CHAOS_DB_PORT": os.environ.get("CHAOS_DB_PORT", "5432"),
        }

    # -- setup and teardown -------------------------------------------------------------

    def setup(self) -> None:
        services.ensure_up()
        netns.clean()
        self.control.unlink(missing_ok=True)
        self.producer_log.unlink(missing_ok=True)
        for host in [*self.hosts, self.producer_host]:
            netns.create(host)
        gateways = [host.gateway for host in [*self.hosts, self.producer_host]]
        self.forwarder = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.forward", str(self.control), *gateways],
            cwd=ROOT, stdout=(self.workdir / "forward.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._database()
        for host in self.hosts:
            worker = WorkerHost(host, self.workdir, self.base_env(host), self.cwd)
            worker.start()
            self.workers.append(worker)

    def _database(self) -> None:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{DB_NAME}"')
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(ledger_ddl())

    def teardown(self) -> None:
        self.stopping.set()  # a fault thread still sleeping stops no service from now on
        for worker in self.workers:
            worker.signal(signal.SIGCONT)
            worker.kill()
        for proc in (self.producer, self.forwarder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        netns.clean()
        services.ensure_up()

    # -- faults -------------------------------------------------------------------------

    def apply(self, fault: Fault) -> None:
        start = time.time()
        try:
            self._apply(fault)
        except Exception as exc:
            log(f"fault {fault.describe()} failed: {exc!r}")
        from .check import Applied

        self.applied.append(Applied(fault.kind, fault.host, start, time.time()))
        log(f"fault done  {fault.describe()}")

    def _apply(self, fault: Fault) -> None:
        log(f"fault start {fault.describe()}")
        kind, seconds = fault.kind, fault.duration
        worker = self.workers[fault.host] if fault.host >= 0 else None
        host = self.hosts[fault.host] if fault.host >= 0 else None
        if kind == "kill" and worker:
            with worker.lock:
                worker.kill()
                time.sleep(seconds)  # the host stays down: its jobs' leases run out
                worker.start()
        elif kind == "stop" and worker and worker.proc:
            pid = worker.proc.pid
            os.kill(pid, signal.SIGSTOP)
            time.sleep(seconds)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        elif kind.startswith("partition") and host:
            for service in {"partition-db": ["db"], "partition-redis": ["redis"]}.get(
                kind, ["db", "redis"]
            ):
                netns.partition(host, service)
            time.sleep(seconds)
            netns.heal(host)
        elif kind == "netem" and host:
            netns.degrade(host, self.control, **fault.params)
            time.sleep(seconds)
            netns.restore(host, self.control)
        elif kind in ("skew", "deploy") and worker:
            key, value = (
                ("DJQ_CLOCK_SKEW", str(fault.params["seconds"]))
                if kind == "skew"
                else ("CHAOS_OLD_CODE", "1")
            )
            with worker.lock:
                worker.overrides[key] = value
                worker.restart()
            time.sleep(seconds)
            with worker.lock:
                worker.overrides.pop(key, None)
                worker.restart()
        elif kind == "redis-restart" and not self.stopping.is_set():
            services.stop_redis()
            time.sleep(seconds)
            services.ensure_up()
        elif kind == "pg-restart" and not self.stopping.is_set():
            services.stop_pg()
            time.sleep(seconds)
            services.ensure_up()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> int:
        window = self.args.window
        plan = fault_schedule.schedule(
            self.seed, window, len(self.hosts), self.lease, services=not self.args.no_restarts
        )
        log(f"seed {self.seed}: {len(plan)} faults over {window:.0f} s on {len(self.hosts)} hosts")
        for fault in plan:
            print("   ", fault.describe(), flush=True)
        self.setup()
        self.stop_file.unlink(missing_ok=True)
        self.producer = subprocess.Popen(
            [*self.producer_host.exec_prefix(), sys.executable, "-m", "tests.chaos.producer",
             str(self.producer_log), str(self.stop_file), str(self.seed)],
            cwd=self.cwd, env={**self.base_env(self.producer_host), "CHAOS_HOST": "producer"},
            stdout=(self.workdir / "producer.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        opened = time.monotonic()
        for fault in plan:
            delay = fault.at - (time.monotonic() - opened)
            if delay > 0:
                time.sleep(delay)  # the schedule's own clock: each fault at its offset
            thread = threading.Thread(target=self.apply, args=(fault,), daemon=True)
            thread.start()
            self.threads.append(thread)
        for thread in self.threads:
            thread.join()
        rest = window - (time.monotonic() - opened)
        if rest > 0:
            time.sleep(rest)
        log("faults over: stopping the producer, healing, draining")
        self.stop_file.touch()
        self.producer.wait(timeout=120)
        return self.finish()

    def finish(self) -> int:
        for host in self.hosts:
            netns.heal(host)
            netns.restore(host, self.control)
        services.ensure_up()
        for worker in self.workers:
            with worker.lock:
                worker.overrides.clear()
                worker.restart()
        from django.db import connection

        connection.close()
        drained = drain(timeout=self.lease * 3 + 120)
        for worker in self.workers:
            worker.stop_gracefully()
        from .check import check

        report = check(self.applied, self.producer_log, self.lease)
        if not drained:
            report.fail("nothing left running once faults stop", "the queue did not drain")
        return print_report(report, self.seed)


def ledger_ddl() -> str:
    from .ledger import DDL

    return DDL


def drain(timeout: float) -> bool:
    """Wait until no chaos job is queued or running (bounded)."""
    from django_jobqueue.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = Job.objects.filter(
            name__startswith="chaos.", status__in=["queued", "running"]
        ).count()
        if not left:
            return True
        time.sleep(0.5)
    return False


def print_report(report: Any, seed: int) -> int:
    for note in report.notes[:30]:
        print("note:", note)
    print("waiters:", ", ".join(f"{k} {v}" for k, v in sorted(report.waits.items())))
    for violation in report.violations[:20]:
        print(f"BROKEN: {violation.invariant}: {violation.detail}")
        for row in violation.rows[:20]:
            print("    ledger:", " | ".join(str(value) for value in row))
    if len(report.violations) > 20:
        print(f"... and {len(report.violations) - 20} more")
    print(
        f"chaos: {report.jobs} jobs, {report.lost} lost, {report.duplicates} duplicate runs "
        f"(≤ {report.faults} faults), {report.wrong} wrong values, seed {seed}",
        flush=True,
    )
    return 1 if report.violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="same seed, same fault schedule")
    parser.add_argument("--minutes", type=float, default=None, help="a soak of N minutes")
    parser.add_argument("--hosts", type=int, default=3, help="worker hosts (default 3)")
    parser.add_argument("--lease", type=float, default=4.0, help="LEASE_SECONDS (default 4)")
    parser.add_argument(
        "--no-restarts",
        action="store_true",
        help="no PostgreSQL/Redis restarts (they are shared: for development)",
    )
    parser.add_argument(
        "--package-from",
        default=None,
        help="a folder holding another django_jobqueue for the hosts to run",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="workers and producers reach PostgreSQL through PgBouncer in transaction pooling "
        "mode (started by scripts/services --pgbouncer)",
    )
    parser.add_argument("--workdir", default="/tmp/djq-chaos", help="logs and the producer's log")
    args = parser.parse_args(argv)  # fmt: skip
    args.seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    args.window = args.minutes * 60 if args.minutes else 150.0  # quick mode: 2.5 minutes
    if os.geteuid() != 0:
        print("scripts/chaos needs root (network namespaces, iptables, tc)", file=sys.stderr)
        return 2
    if args.pgbouncer:
        subprocess.run([str(ROOT / "scripts" / "services"), "--pgbouncer"], check=True)
        os.environ["CHAOS_DB_PORT"] = "6432"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="tests.chaos.settings", CHAOS_SERVICES_HOST="127.0.0.1",
        CHAOS_DB_NAME=DB_NAME, CHAOS_LEASE_SECONDS=str(args.lease), CHAOS_HOST="checker",
    )  # fmt: skip
    import django

    django.setup()
    chaos = Chaos(args)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        return chaos.run()
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        chaos.teardown()


if __name__ == "__main__":
    sys.exit(main())
