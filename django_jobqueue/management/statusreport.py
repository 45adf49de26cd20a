"""``manage.py jobqueue status``: its report (``--json``) and its text, read through
:mod:`django_jobqueue.stats` and the pauses."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django_jobqueue import stats
from django_jobqueue.base import ACTIVE, FINISHED, Status
from django_jobqueue.management import pausing
from django_jobqueue.metrics import live_workers
from django_jobqueue.routers import queue_databases
from django_jobqueue.serialization import printable

#: ``status`` looks at this many minutes of finished jobs: the last full one and this one.
_STATUS_MINUTES = 2


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, (", ".join(words[:-1]), words[-1]))) if words else ""


def table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """Aligned columns, each cell escaped by ``printable()`` (no ESC from a row escapes)."""
    rows = [headers, *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_report(now: datetime, *, queues: Iterable[str] | None = None) -> dict[str, Any]:
    """What ``jobqueue status --json`` prints: one entry per queue (``queues``: only those)."""
    cap = stats.FINISHED_COUNT_CAP
    paused = pausing.paused_report(now)
    # Every queue (a paused one listed, even empty), or only those asked for.
    shown = list(queues) if queues is not None else [p["queue"] for p in paused]
    # Queues on databases of their own (JOBQUEUE["QUEUES"]): each alias's, then the total.
    aliases = queue_databases()
    rows, all_queues = stats.every_database(
        now, queues=shown, only=queues is not None, minutes=_STATUS_MINUTES, cap=cap
    )

    def entry(row: stats.QueueSummary, alias: str = "") -> dict[str, Any]:
        assert row.throughput is not None
        last_minute, this_minute = row.throughput.per_minute[-2:]
        return {
            "queue": row.queue,
            "database": alias,
            "counts": {status: row.counts.get(status, 0) for status in Status.values},
            "finished_capped": row.capped,
            "oldest_waiting_seconds": stats.waited_seconds(row.waiting_since, now),
            "finished_last_minute": sum(last_minute),
            "finished_this_minute": sum(this_minute),
            "dead_letters": row.dead_letters,
            "paused": row.queue in {p["queue"] for p in paused},
        }

    total = entry(all_queues)
    del total["queue"], total["paused"], total["database"]
    workers = [live_workers(alias) for alias in aliases]
    return {
        "time": now.isoformat(),
        "queues": [entry(row, alias) for alias, row in rows],
        "total": total,
        "live_workers": None if None in workers else sum(w or 0 for w in workers),
        "databases": aliases,
        "finished_count_cap": cap,
        "exact": list(ACTIVE),
        "paused": paused,
    }


def render_status(report: dict[str, Any]) -> str:
    """The text of ``jobqueue status``."""
    statuses = Status.values

    def row(name: str, entry: dict[str, Any]) -> list[str]:
        counts = [
            f"{entry['counts'][s]:,}" + ("+" if entry["finished_capped"] and s in FINISHED else "")
            for s in statuses
        ]
        return [
            name,
            *counts,
            age(entry["oldest_waiting_seconds"]),
            f"{entry['finished_last_minute']:,}",
            f"{entry['dead_letters']:,}",
        ]

    headers = ["queue", *statuses, "oldest waiting", "finished/min", "dead letters"]
    several = len(report["databases"]) > 1  # then each queue names its database
    lines = [
        row(
            e["queue"]
            + (f" @{e['database']}" if several else "")
            + (" (paused)" if e["paused"] else ""),
            e,
        )
        for e in report["queues"]
    ]
    lines.append(row("(all)", report["total"]))
    live = report["live_workers"]
    cap = report["finished_count_cap"]
    return "\n".join(
        [
            f"django-jobqueue at {report['time'][:19]} UTC",
            table(headers, lines),
            "",
            "live workers: " + ("not recorded by this version" if live is None else f"{live:,}"),
            *pausing.render(report["paused"]),
            f"{listed(report['exact'])} are exact; finished jobs are counted up to "
            f"{cap:,} ('+': more); finished/min is the last full minute.",
        ]
    )
