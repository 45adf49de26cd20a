"""``manage.py jobqueue``: the operator's command. ``status``, ``health``, ``prune``,
``dead-letters``, ``requeue``, ``cancel``, ``pause`` and ``resume``;
``manage.py jobqueue SUBCOMMAND --help`` for each.

Every subcommand reads through :mod:`django_jobqueue.stats` or the library's own verbs
(:meth:`JobQuerySet.prune`, :func:`deadletters.requeue_report`, :func:`control.cancel_queued`),
so it does what the worker and the admin do, and none counts the whole job table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.db.models import Count, Max
from django.utils import timezone

from django_jobqueue import conf, stats
from django_jobqueue.base import ACTIVE, FINISHED, Status
from django_jobqueue.control import cancel_queued
from django_jobqueue.deadletters import prune as prune_dead_letters
from django_jobqueue.deadletters import requeue_report
from django_jobqueue.management import pausing
from django_jobqueue.management.argtypes import positive
from django_jobqueue.management.pausing import queue_name as _queue
from django_jobqueue.management.statusreport import age as _age
from django_jobqueue.management.statusreport import render_status, status_report
from django_jobqueue.management.statusreport import table as _table
from django_jobqueue.metrics import live_workers
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.routers import queue_database, queue_databases

#: ``jobqueue health`` exit codes (``status`` exits 0, or 3 when the database is unreachable).
HEALTHY = 0
DATABASE_UNREACHABLE = 3
BACKED_UP = 4
NO_LIVE_WORKER = 5

#: Dead letters requeued per transaction by ``jobqueue requeue``.
REQUEUE_BATCH = 500


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: give a finite number of seconds, >= 0")
    return number


#: ``status --watch SECONDS``: the redraw intervals accepted (each report is a few queries).
WATCH_SECONDS = (0.5, 86_400.0)


def _watch_interval(value: str) -> float:
    number = _seconds(value)
    low, high = WATCH_SECONDS
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give the seconds between two reports, from {low:g} to {high:g} "
            "(a day); leave --watch out for one report"
        )
    return number


def _declare(parser: CommandParser) -> argparse._SubParsersAction[Any]:
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
        type=_watch_interval,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="Redraw every SECONDS (0.5 to 86400; default when given without a value: 2) "
        "until Ctrl-C.",
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="One JSON document (with --watch: one per line, JSON Lines).",
    )
    status.add_argument(
        "--queue", dest="queues", action="append", type=_queue, metavar="NAME",
        help="Only this queue, listed even when empty; repeat for several.",
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
        "short transaction, until none is left; then job batches (with batch()) whose "
        "callbacks ran and whose jobs are all gone; then dead letters past DEAD_LETTER_TTL or "
        "beyond DEAD_LETTER_MAX, oldest first (kept when both are None). Workers do the "
        "same continuously; this is for catching up or for a deployment without workers.",
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
        type=positive,
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
    pausing.declare(sub)
    return sub


class Command(BaseCommand):
    help = (
        "Operate the job queue: status (counts, oldest waiting job, throughput), health "
        "(an exit code for monitoring), prune (delete finished jobs past their result_ttl), "
        "dead-letters (list them), requeue (dead letters, by name, queue or id), cancel "
        "(queued jobs of a queue), pause and resume (a queue). "
        "'manage.py jobqueue SUBCOMMAND --help' for each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = _declare(parser)
        # Django's own options after a subcommand too: ``jobqueue status --settings=...``.
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version", "action"):
                for subparser in sub.choices.values():
                    copied = copy.copy(action)
                    copied.default = argparse.SUPPRESS  # absent: the main parser's value stays
                    subparser._add_action(copied)

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
        report = status_report(timezone.now(), queues=options["queues"])
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
        waiting: dict[str, Any] = {}
        for alias in queue_databases():  # queues on databases of their own: the oldest of all
            for queue, since in stats.oldest_waiting(now, using=alias).items():
                waiting[queue] = min(since, waiting.get(queue, since))
        wanted = options["queues"]
        limit = options["max_waiting"]
        paused = pausing.paused_report(now)  # their jobs wait on purpose: not backed up
        late = {
            queue: stats.waited_seconds(since, now) or 0.0
            for queue, since in waiting.items()
            if (not wanted or queue in wanted) and queue not in {p["queue"] for p in paused}
        }
        counts = [live_workers(alias) for alias in queue_databases()]
        live = None if None in counts else sum(count or 0 for count in counts)
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
        for line in pausing.render(paused):
            self.stdout.write(line)

    # -- prune -----------------------------------------------------------------------------

    def _prune(self, options: dict[str, Any]) -> None:
        aliases = queue_databases()
        for alias in aliases:  # queues on databases of their own: a line each
            self._prune_on(alias, options, f" (database {alias!r})" if len(aliases) > 1 else "")

    def _prune_on(self, alias: str, options: dict[str, Any], where: str) -> None:
        now = timezone.now()
        older = options["older_than"]
        before = None if older is None else now - timedelta(seconds=older)
        jobs = Job.objects.using(alias)
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
            letters = prune_dead_letters(now, dry_run=True, using=alias)
            more = "" if letters is None else f", and {letters} dead letters"
            self.stdout.write(f"would delete {rows.count()} {what}{more}{where}")
            return
        batch = conf.settings.PRUNE_BATCH
        total = 0
        while True:
            deleted = jobs.prune(now, limit=batch, finished_before=before)
            total += deleted
            if deleted < batch:
                break
        batches = 0
        while True:
            pruned = jobs.prune_batches(limit=batch)
            batches += pruned
            if pruned < batch:
                break
        letters = prune_dead_letters(now, using=alias)
        more = "" if letters is None else f", and {letters} dead letters"
        self.stdout.write(
            f"deleted {total} {what}, with their results, {batches} finished batches{more}{where}"
        )

    # -- dead letters ----------------------------------------------------------------------

    def _letters(self, options: dict[str, Any], alias: str) -> Any:
        letters = DeadLetter.objects.using(alias)
        if options.get("name"):
            letters = letters.filter(name=options["name"])
        if options.get("queue"):
            letters = letters.filter(queue=options["queue"])
        return letters

    def _dead_letters(self, options: dict[str, Any]) -> None:
        groups: list[dict[str, Any]] = []
        latest: list[dict[str, Any]] = []
        aliases = queue_databases()
        for alias in aliases:  # queues on databases of their own: each
            more_groups, more_latest = self._letters_on(alias, options)
            groups += more_groups
            latest += more_latest
        if len(aliases) > 1:  # one list, ordered as each database orders its own
            groups.sort(key=lambda g: (-g["count"], g["name"], g["queue"]))
            latest.sort(key=lambda r: r["failed_at"], reverse=True)
            latest = latest[: options["limit"]]
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

    def _letters_on(self, alias: str, options: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        letters = self._letters(options, alias)
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
        return groups, latest

    def _requeue(self, options: dict[str, Any]) -> None:
        filters = [options["name"], options["queue"], options["job_ids"]]
        if not any(filters) and not options["all"]:
            raise CommandError("say which dead letters: --name, --queue, --job-id, or --all")
        rows: list[tuple[str, int, str]] = []
        for alias in queue_databases():  # queues on databases of their own: each
            letters = self._letters(options, alias)
            if options["job_ids"]:
                letters = letters.filter(job_id__in=options["job_ids"])
            found = letters.order_by("pk").values_list("pk", "job_id")
            rows += [(alias, pk, job_id) for pk, job_id in found]
        pks = [pk for _, pk, _ in rows]
        missing = sorted(set(options["job_ids"] or ()) - {job_id for _, _, job_id in rows})
        if not pks:
            self.stdout.write("no dead letter matches: nothing requeued")
        elif options["dry_run"]:
            self.stdout.write(f"would requeue {len(pks)} dead letters")
        else:
            requeued = skipped = 0
            for alias in dict.fromkeys(alias for alias, _, _ in rows):
                on = [pk for where, pk, _ in rows if where == alias]
                for start in range(0, len(on), REQUEUE_BATCH):
                    report = requeue_report(on[start : start + REQUEUE_BATCH], using=alias)
                    requeued += len(report.requeued)
                    skipped += len(report.skipped)
            self.stdout.write(
                f"requeued {requeued} dead letters"
                + (f"; kept {skipped} whose job is queued or running" if skipped else "")
            )
        if missing:  # an explicit job id that is no dead letter: a mistake worth an exit code
            raise CommandError(f"no dead letter for job id(s) {', '.join(map(repr, missing))}")

    def _pause(self, options: dict[str, Any]) -> None:
        pausing.pause(options, self.stdout.write)

    def _resume(self, options: dict[str, Any]) -> None:
        pausing.resume(options, self.stdout.write)

    # -- cancel ----------------------------------------------------------------------------

    def _cancel(self, options: dict[str, Any]) -> None:
        if options["dry_run"]:
            jobs = Job.objects.using(queue_database(options["queue"]))
            rows = jobs.filter(status=Status.QUEUED, queue=options["queue"])
            if options["name"]:
                rows = rows.filter(name=options["name"])
            self.stdout.write(f"would cancel {rows.count()} queued jobs")
            return
        cancelled = cancel_queued(options["queue"], name=options["name"])
        self.stdout.write(f"cancelled {cancelled} queued jobs of queue {options['queue']!r}")
