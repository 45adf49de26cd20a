"""The ledger: one row per event a chaos job lives through, stamped by PostgreSQL's clock.

A run writes ``start`` when it begins and ``end`` when its work is done; an ``atomic=True``
job writes its ``effect`` row inside the job's own transaction, so a run that is rolled
back leaves none. Plain jobs write each row in its own transaction (autocommit), so a run
that dies in the middle leaves its ``start`` behind: that is what counts the runs.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.db import connection

DDL = """
CREATE TABLE IF NOT EXISTS chaos_ledger (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    kind text NOT NULL,
    event text NOT NULL,
    attempt integer NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    grp text NOT NULL DEFAULT '',
    seq integer NOT NULL DEFAULT 0,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chaos_ledger_job ON chaos_ledger (job_id);
"""

HOST = os.environ.get("CHAOS_HOST", socket.gethostname())


def write(job_id: str, kind: str, event: str, attempt: int, grp: str = "", seq: int = 0) -> None:
    """Insert one ledger row on the job's connection (inside the job's transaction for an
    atomic job; committed at once otherwise)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO chaos_ledger (job_id, kind, event, attempt, host, pid, grp, seq) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [job_id, kind, event, attempt, HOST, os.getpid(), grp, seq],
        )


def rows(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return list(cursor.fetchall())
