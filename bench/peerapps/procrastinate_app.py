"""Procrastinate on PostgreSQL, as its quickstart starts it: ``procrastinate --app=APP worker``.

``App(connector=PsycopgConnector(...))`` on ``PEERS_PG_URL`` (its own database; the schema is
applied at set-up). The worker's default is one process running one job at a time
(``--concurrency 1``), woken by LISTEN/NOTIFY: the drain starts it twice. Procrastinate keeps
no return value and has no call that waits for a job, so the round trip defers the job and
then reads its status every millisecond until it is ``succeeded`` (what a caller would do).
"""

from __future__ import annotations

import os
import sys
import time
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import procrastinate

from bench.peerapps.mark import mark

_URL = os.environ.get(
    "PEERS_PG_URL", "postgresql://postgres@127.0.0.1:5432/djq_peers_procrastinate"
)
_CONNINFO = _URL.replace("postgres://", "postgresql://", 1)
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_CONNINFO))
_poll: Any = None


@app.task(name="noop")
def noop() -> None:
    mark()


def setup() -> None:
    global _poll
    import psycopg

    app.open()
    app.schema_manager.apply_schema()
    _poll = psycopg.connect(_CONNINFO, autocommit=True)


def version() -> str:
    return f"Procrastinate {_version('procrastinate')} (PostgreSQL)"


def describe() -> str:
    return "`procrastinate --app=bench.peerapps.procrastinate_app.app worker`, started twice"


def worker_commands(*, drain: bool) -> list[list[str]]:
    argv = [
        str(Path(sys.executable).parent / "procrastinate"),
        "--app=bench.peerapps.procrastinate_app.app",
        "worker",
    ]
    return [argv, argv] if drain else [argv]


def enqueue() -> None:
    noop.defer()


def roundtrip(timeout: float) -> None:
    job_id = noop.defer()
    deadline = time.monotonic() + timeout
    while True:
        sql = "SELECT status FROM procrastinate_jobs WHERE id = %s"
        row = _poll.execute(sql, [job_id]).fetchone()
        if row and row[0] == "succeeded":
            return
        if row and row[0] in ("failed", "cancelled", "aborted"):
            raise RuntimeError(f"procrastinate job {job_id} ended {row[0]}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"procrastinate job {job_id} still {row[0] if row else None}")
        time.sleep(0.001)


def teardown() -> None:
    if _poll is not None:
        _poll.close()
    app.close()
