"""Restarting PostgreSQL and Redis (the machine's own, shared with everything else on it),
and making sure both are back: :func:`ensure_up` runs at the start, after each restart and
in the harness's ``finally``."""

from __future__ import annotations

import os
import subprocess
import time

REDIS_START = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip


def _cluster() -> str:
    return sorted(os.listdir("/etc/postgresql"))[0]


def _run(*args: str) -> bool:
    return subprocess.run(args, capture_output=True, text=True).returncode == 0


def redis_up() -> bool:
    return _run("redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping")


def pg_up() -> bool:
    return _run("pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432")


def stop_redis() -> None:
    _run("redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave")


def start_redis() -> None:
    if not redis_up():
        _run(*REDIS_START)


def stop_pg() -> None:
    _run("pg_ctlcluster", "--skip-systemctl-redirect", _cluster(), "main", "stop", "-m", "fast")


def start_pg() -> None:
    if not pg_up():
        _run("pg_ctlcluster", "--skip-systemctl-redirect", _cluster(), "main", "start")


def ensure_up(timeout: float = 60.0) -> None:
    """Start whichever of the two is down and wait until both answer."""
    deadline = time.monotonic() + timeout
    while True:
        start_pg()
        start_redis()
        if pg_up() and redis_up():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL or Redis did not come back: start them by hand")
        time.sleep(0.5)
