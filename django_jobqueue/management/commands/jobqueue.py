"""``manage.py jobqueue``: the operator's command. ``status``, ``health``, ``prune``,
``dead-letters``, ``requeue`` and ``cancel``; ``manage.py jobqueue SUBCOMMAND --help`` for each.

Every subcommand reads through :mod:`django_jobqueue.stats` or the library's own verbs
(:meth:`JobQuerySet.prune`, :func:`deadletters.requeue_report`, :func:`control.cancel_queued`),
so it does what the worker and the admin do, and none counts the whole job table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, router
from django.db.models import Count, Max
from django.utils import timezone

from django_jobqueue import conf, stats
from django_jobqueue.base import ACTIVE, FINISHED, Status
from django_jobqueue.control import cancel_queued
from django_jobqueue.deadletters import requeue_report
from django_jobqueue.metrics import live_workers
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.options import check_queue

#: ``jobqueue health`` exit codes (``status`` exits 0, or 3 when the database is unreachable).
HEALTHY = 0
DATABASE_UNREACHABLE = 3
BACKED_UP = 4
NO_LIVE_WORKER = 5

#: Dead letters requeued per transaction by ``jobqueue requeue``.
REQUEUE_BATCH = 500

#: ``status`` looks at this many minutes of finished jobs: the last full one and this one.
_STATUS_MINUTES = 2


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a finite number of seconds, >= 0")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _queue(value: str) -> str:
    try:
        return check_queue(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _declare(parser: CommandParser) -> None:
    """The subcommands and their options (each with its own ``--help``)."""
    sub = parser.add_subparsers(dest="action", metavar="SUBCOMMAND", required=True)

    status = sub.add_parser(
        "status",
        help="Jobs per queue and status, the oldest waiting job's age, jobs finished per "
        "minute, dead letters, live workers.",
        description=f"Jobs per queue and status ({' and '.join(ACTIVE)} counted exactly, "
        f"finished ones up to {stats.FINISHED_COUNT_CAP:,} over all queues, shown with "
        "'+' past that), how long the oldest ready job of each queue has waited, jobs "
        "finished in the last full minute and so far this minute, dead letters, and live "
        "workers once workers record heartbeats. Exit code 3 if the database is "
        "unreachable.",
    )
    status.add_argument(
        "--watch",
        nargs="?",
        type=_seconds,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="Redraw every SECONDS (default when given without a value: 2) until Ctrl-C.",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="One JSON document (with --watch: one per line, JSON Lines).",
    )
    status.add_argument(
        "--queue", dest="queues", action="append", type=_queue, metavar="NAME",
        help="Always list this queue, even when empty; repeat for several.",
    )  # fmt: skip

    health = sub.add_parser(
        "health",
        help="Exit 0 if healthy; 3 database unreachable, 4 queue backed up, 5 no live "
        "worker. For a monitoring check or a container's health probe.",
        description="A health check by exit code: 0 healthy; 3 the database is "
        "unreachable; 4 a queue is backed up (its oldest ready job has waited longer "
        "than --max-waiting); 5 no live worker (checked only once workers record "
        "heartbeats). One line on stdout (healthy) or stderr says why. Cheap: one "
        "grouped query over queued jobs, and one over workers.",
    )
    health.add_argument(
        "--max-waiting",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="Backed up when a ready job has waited longer than this (default: %(default)r).",
    )
    health.add_argument(
        "--queue", dest="queues", action="append", type=_queue, metavar="NAME",
        help="Check only this queue; repeat for several (default: every queue).",
    )  # fmt: skip
    health.add_argument(
        "--min-workers",
        type=int,
        default=1,
        metavar="N",
        help="Fewer live workers than this is exit code 5 (default: %(default)r; 0 "
        "turns the check off).",
    )

    prune = sub.add_parser(
        "prune",
        help="Delete finished jobs past their result_ttl, with their results.",
        description="Delete finished jobs (completed, failed, cancelled) past their "
        "result_ttl, with their results, in batches of PRUNE_BATCH rows, each in its own "
        "short transaction, until none is left. Workers do the same continuously; this "
        "is for catching up or for a deployment without workers running. Dead letters "
        "are kept.",
    )
    prune.add_argument(
        "--older-than",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="Instead: delete finished jobs that finished more than SECONDS ago, "
        "whatever their result_ttl (a job id deleted early can run again).",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
    )

    letters = sub.add_parser(
        "dead-letters",
        help="List dead letters: how many per job name and queue, then the latest.",
        description="Dead letters per job name and queue with the latest failure, then "
        "the latest dead letters with their error's last line.",
    )
    letters.add_argument("--name", help="Only dead letters of this job name.")
    letters.add_argument("--queue", type=_queue, help="Only dead letters of this queue.")
    letters.add_argument(
        "--limit",
        type=_positive,
        default=20,
        metavar="N",
        help="List the latest N (default: %(default)r).",
    )
    letters.add_argument("--json", action="store_true", help="As one JSON document.")

    requeue = sub.add_parser(
        "requeue",
        help="Requeue dead letters by job name, queue or job id (or all of them).",
        description="Run dead letters again, with their id and arguments: each is "
        "deleted as its job is queued, in transactions of "
        f"{REQUEUE_BATCH} (see django_jobqueue.deadletters). A dead letter whose job is "
        "queued or running is kept. Give at least one filter, or --all.",
    )
    requeue.add_argument("--name", help="Dead letters of this job name.")
    requeue.add_argument("--queue", type=_queue, help="Dead letters of this queue.")
    requeue.add_argument(
        "--job-id",
        dest="job_ids",
        action="append",
        metavar="ID",
        help="This job id; repeat for several.",
    )
    requeue.add_argument("--all", action="store_true", help="Every dead letter (no filter needed).")
    requeue.add_argument(
        "--dry-run", action="store_true", help="Count what would be requeued; change nothing."
    )

    cancel = sub.add_parser(
        "cancel",
        help="Cancel the queued jobs of a queue (optionally of one job name).",
        description="Cancel every queued job of --queue (and --name): they never run, "
        "their waiters get JobCancelledError. Running jobs are left alone (cancel one "
        "with django_jobqueue.cancel(job_id) or the admin).",
    )
    cancel.add_argument("--queue", type=_queue, required=True, help="The queue.")
    cancel.add_argument("--name", help="Only jobs of this job name.")
    cancel.add_argument(
        "--dry-run", action="store_true", help="Count what would be cancelled; change nothing."
    )


class Command(BaseCommand):
    help = (
        "Operate the job queue: status (counts, oldest waiting job, throughput), health "
        "(an exit code for monitoring), prune (delete finished jobs past their result_ttl), "
        "dead-letters (list them), requeue (dead letters, by name, queue or id), cancel "
        "(queued jobs of a queue). 'manage.py jobqueue SUBCOMMAND --help' for each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        _declare(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"].replace("-", "_")
        try:
            getattr(self, f"_{action}")(options)
        except DatabaseError as exc:
            raise CommandError(
                f"database unreachable: {exc}".strip(), returncode=DATABASE_UNREACHABLE
            ) from exc

    # -- status ----------------------------------------------------------------------------

    def _status(self, options: dict[str, Any]) -> None:
        interval = options["watch"]
        if interval is None:
            self._status_once(options, clear=False)
            return
        try:
            while True:
                self._status_once(options, clear=not options["json"])
                time.sleep(interval)
        except KeyboardInterrupt:
            return

    def _status_once(self, options: dict[str, Any], *, clear: bool) -> None:
        report = status_report(timezone.now(), queues=options["queues"] or ())
        if options["json"]:
            self.stdout.write(json.dumps(report, separators=(",", ":")))
            return
        if clear and self.stdout.isatty():
            self.stdout.write("\x1b[H\x1b[2J", ending="")
        self.stdout.write(render_status(report))
        self.stdout.flush()

    # -- health ----------------------------------------------------------------------------

    def _health(self, options: dict[str, Any]) -> None:
        now = timezone.now()
        waiting = stats.oldest_waiting(now)
        wanted = options["queues"]
        limit = options["max_waiting"]
        late = {
            queue: stats.waited_seconds(since, now) or 0.0
            for queue, since in waiting.items()
            if (not wanted or queue in wanted)
        }
        live = live_workers()
        if live is not None and live < options["min_workers"]:
            raise CommandError(
                f"no live worker: {live} with a recent heartbeat, expected at least "
                f"{options['min_workers']}",
                returncode=NO_LIVE_WORKER,
            )
        backed_up = sorted((q, s) for q, s in late.items() if s > limit)
        if backed_up:
            text = ", ".join(f"{q!r} waited {s:.0f}s" for q, s in backed_up)
            raise CommandError(
                f"backed up: {text} (over {limit:g}s)",
                returncode=BACKED_UP,
            )
        oldest = max(late.values(), default=None)
        workers = "not recorded" if live is None else str(live)
        self.stdout.write(
            f"healthy: oldest ready job waited {_age(oldest)} (limit {limit:g}s), "
            f"live workers {workers}"
        )

    # -- prune -----------------------------------------------------------------------------

    def _prune(self, options: dict[str, Any]) -> None:
        now = timezone.now()
        older = options["older_than"]
        before = None if older is None else now - timedelta(seconds=older)
        jobs = Job.objects.using(router.db_for_write(Job))
        what = (
            "finished jobs past their result_ttl"
            if before is None
            else f"finished jobs that finished before {before.isoformat()}"
        )
        if options["dry_run"]:
            rows = jobs.filter(status__in=FINISHED)
            rows = (
                rows.filter(expires_at__lte=now)
                if before is None
                else rows.filter(finished_at__lte=before)
            )
            self.stdout.write(f"would delete {rows.count()} {what}")
            return
        batch = conf.settings.PRUNE_BATCH
        total = 0
        while True:
            deleted = jobs.prune(now, limit=batch, finished_before=before)
            total += deleted
            if deleted < batch:
                break
        self.stdout.write(f"deleted {total} {what}, with their results")

    # -- dead letters ----------------------------------------------------------------------

    def _letters(self, options: dict[str, Any]) -> Any:
        letters = DeadLetter.objects.all()
        if options.get("name"):
            letters = letters.filter(name=options["name"])
        if options.get("queue"):
            letters = letters.filter(queue=options["queue"])
        return letters

    def _dead_letters(self, options: dict[str, Any]) -> None:
        letters = self._letters(options)
        groups = [
            {
                "name": row["name"],
                "queue": row["queue"],
                "count": row["n"],
                "last_failed_at": row["last"].isoformat(),
            }
            for row in letters.order_by()
            .values("name", "queue")
            .annotate(n=Count("id"), last=Max("failed_at"))
            .order_by("-n", "name", "queue")
        ]
        latest = [
            {
                "job_id": letter.job_id,
                "name": letter.name,
                "queue": letter.queue,
                "attempts": letter.attempts,
                "failed_at": letter.failed_at.isoformat(),
                "error": letter.error_summary,
            }
            for letter in letters[: options["limit"]]
        ]
        if options["json"]:
            self.stdout.write(json.dumps({"groups": groups, "latest": latest}, indent=2))
            return
        if not groups:
            self.stdout.write("no dead letters")
            return
        self.stdout.write(_table(["count", "name", "queue", "last failed"], [
            [str(g["count"]), g["name"], g["queue"], g["last_failed_at"][:19]] for g in groups
        ]))  # fmt: skip
        self.stdout.write("")
        self.stdout.write(_table(["failed at", "job id", "name", "attempts", "error"], [
            [r["failed_at"][:19], r["job_id"], r["name"], str(r["attempts"]), r["error"][:80]]
            for r in latest
        ]))  # fmt: skip

    def _requeue(self, options: dict[str, Any]) -> None:
        filters = [options["name"], options["queue"], options["job_ids"]]
        if not any(filters) and not options["all"]:
            raise CommandError("say which dead letters: --name, --queue, --job-id, or --all")
        letters = self._letters(options)
        if options["job_ids"]:
            letters = letters.filter(job_id__in=options["job_ids"])
        pks = list(letters.order_by("pk").values_list("pk", flat=True))
        if options["dry_run"]:
            self.stdout.write(f"would requeue {len(pks)} dead letters")
            return
        requeued = skipped = 0
        for start in range(0, len(pks), REQUEUE_BATCH):
            report = requeue_report(pks[start : start + REQUEUE_BATCH])
            requeued += len(report.requeued)
            skipped += len(report.skipped)
        self.stdout.write(
            f"requeued {requeued} dead letters"
            + (f"; kept {skipped} whose job is queued or running" if skipped else "")
        )

    # -- cancel ----------------------------------------------------------------------------

    def _cancel(self, options: dict[str, Any]) -> None:
        if options["dry_run"]:
            rows = Job.objects.filter(status=Status.QUEUED, queue=options["queue"])
            if options["name"]:
                rows = rows.filter(name=options["name"])
            self.stdout.write(f"would cancel {rows.count()} queued jobs")
            return
        cancelled = cancel_queued(options["queue"], name=options["name"])
        self.stdout.write(f"cancelled {cancelled} queued jobs of queue {options['queue']!r}")


def _listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, (", ".join(words[:-1]), words[-1]))) if words else ""


def _table(headers: list[str], rows: Iterable[list[str]]) -> str:
    rows = [headers, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def status_report(now: datetime, *, queues: Iterable[str] = ()) -> dict[str, Any]:
    """What ``jobqueue status --json`` prints: plain JSON values, one entry per queue."""
    cap = stats.FINISHED_COUNT_CAP
    found = stats.summary(now, queues=queues, minutes=_STATUS_MINUTES, cap=cap)

    def entry(row: stats.QueueSummary) -> dict[str, Any]:
        assert row.throughput is not None
        last_minute, this_minute = row.throughput.per_minute[-2:]
        return {
            "queue": row.queue,
            "counts": {status: row.counts.get(status, 0) for status in Status.values},
            "finished_capped": row.capped,
            "oldest_waiting_seconds": stats.waited_seconds(row.waiting_since, now),
            "finished_last_minute": sum(last_minute),
            "finished_this_minute": sum(this_minute),
            "dead_letters": row.dead_letters,
        }

    total = entry(found.total)
    del total["queue"]
    return {
        "time": now.isoformat(),
        "queues": [entry(row) for row in found.queues],
        "total": total,
        "live_workers": live_workers(),
        "finished_count_cap": cap,
        "exact": list(ACTIVE),
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
            _age(entry["oldest_waiting_seconds"]),
            f"{entry['finished_last_minute']:,}",
            f"{entry['dead_letters']:,}",
        ]

    headers = ["queue", *statuses, "oldest waiting", "finished/min", "dead letters"]
    lines = [row(e["queue"], e) for e in report["queues"]]
    lines.append(row("(all)", report["total"]))
    live = report["live_workers"]
    cap = report["finished_count_cap"]
    return "\n".join(
        [
            f"django-jobqueue at {report['time'][:19]} UTC",
            _table(headers, lines),
            "",
            "live workers: " + ("not recorded by this version" if live is None else f"{live:,}"),
            f"{_listed(report['exact'])} are exact; finished jobs are counted up to "
            f"{cap:,} ('+': more); finished/min is the last full minute.",
        ]
    )
