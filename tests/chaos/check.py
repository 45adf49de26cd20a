"""The invariants, checked from the ledger, the job rows and the producer's log once the
faults have stopped and the queue has drained. Each broken invariant is a
:class:`Violation` carrying the ledger rows that show it."""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django_jobqueue.models import DeadLetter, Job, JobResult

from . import ledger
from .faults import RERUN_KINDS

#: A waiter may take this much longer than its timeout: the last database read after the
#: deadline, on a machine shared with the chaos itself.
WAIT_GRACE = 2.0
LIMIT = 2  # JOBQUEUE["LIMITS"]["chaos-limit"]["concurrency"]


@dataclass
class Violation:
    invariant: str
    detail: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class Applied:
    """A fault as it happened: wall-clock start and end on this machine (the database's
    clock: same machine)."""

    kind: str
    host: int
    start: float
    end: float


@dataclass
class Report:
    jobs: int = 0
    lost: int = 0
    duplicates: int = 0
    faults: int = 0
    wrong: int = 0
    waits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)

    def fail(self, invariant: str, detail: str, rows: list[tuple[Any, ...]] | None = None) -> None:
        self.violations.append(Violation(invariant, detail, rows or []))


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _ledger_rows(job_id: str) -> list[tuple[Any, ...]]:
    return ledger.rows(
        "SELECT job_id, kind, event, attempt, host, pid, grp, seq, at FROM chaos_ledger "
        "WHERE job_id = %s ORDER BY at",
        [job_id],
    )


def check(faults: list[Applied], producer_log: Path, lease: float) -> Report:
    report = Report(faults=len(faults))
    jobs = {
        row["job_id"]: row
        for row in Job.objects.filter(name__startswith="chaos.").values(
            "job_id", "name", "status", "attempts", "finished_at", "group", "args", "last_error"
        )
    }
    results = dict(
        JobResult.objects.filter(job__name__startswith="chaos.").values_list(
            "job__job_id", "result"
        )
    )
    events: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in ledger.rows(
        "SELECT job_id, kind, event, attempt, host, pid, grp, seq, at FROM chaos_ledger ORDER BY at"
    ):
        events[row[0]].append(row)
    report.jobs = len(jobs)
    calls = [json.loads(line) for line in producer_log.read_text().splitlines() if line.strip()]
    _lost(report, jobs, calls)
    _dead_letters(report)
    _runs(report, jobs, events, faults, lease)
    _atomic(report, jobs, events)
    _outcomes(report, jobs, results, events)
    _groups(report, jobs, events)
    _waiters(report, calls, [f for f in faults if f.kind == "pg-restart"])
    _ticks(report, jobs, events)
    _limits(report, events, lease)
    _workflows(report, jobs, events, calls)
    return report


def _lost(report: Report, jobs: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    """Every job the producer saw committed exists; every job ends completed."""
    committed = {c["job_id"] for c in calls if c.get("call") == "enqueue" and c["outcome"] == "ok"}
    committed |= {c["job_id"] for c in calls if c.get("call") == "wait" and c["outcome"] == "value"}
    committed |= {
        job_id
        for c in calls
        if c.get("call") == "workflow" and c["outcome"] == "ok"
        for job_id in c["jobs"]
    }
    missing = sorted(committed - set(jobs))
    unfinished = sorted(job_id for job_id, row in jobs.items() if row["status"] != "completed")
    report.lost = len(missing) + len(unfinished)
    for job_id in missing[:10]:
        report.fail(
            "no committed job lost", f"{job_id}: enqueued, no job row", _ledger_rows(job_id)
        )
    for job_id in unfinished[:10]:
        row = jobs[job_id]
        report.fail(
            "no committed job lost",
            f"{job_id}: status {row['status']} after the drain ({row['last_error'][:200]})",
            _ledger_rows(job_id),
        )


def _dead_letters(report: Report) -> None:
    """No job ends as a dead letter: faults, not the jobs, fail attempts (``MAX_ATTEMPTS``
    50), and a worker on the previous release gives back the job names it does not know
    (``UNKNOWN_JOB_GRACE``) for a worker that knows them."""
    for letter in DeadLetter.objects.filter(name__startswith="chaos.").order_by("id")[:10]:
        report.fail(
            "no job dead-lettered",
            f"{letter.job_id} ({letter.name}): {letter.error[:200]}",
            _ledger_rows(letter.job_id),
        )


def _hits(faults: list[Applied], start: datetime, end: datetime, lease: float) -> int:
    """Faults whose window (plus a lease, the time a hit run takes to be reaped) overlaps
    the job's life from its first start to its completion."""
    margin = timedelta(seconds=lease + 2)
    return sum(
        1
        for f in faults
        if f.kind in RERUN_KINDS and _ts(f.start) <= end and _ts(f.end) + margin >= start
    )


def _runs(
    report: Report,
    jobs: dict[str, Any],
    events: dict[str, list[tuple[Any, ...]]],
    faults: list[Applied],
    lease: float,
) -> None:
    """Runs of a job (its ``start`` rows) ≤ 1 + the faults that hit it."""
    for job_id, rows in events.items():
        starts = [r for r in rows if r[2] in ("start", "effect")]
        if len(starts) <= 1:
            continue
        report.duplicates += len(starts) - 1
        row = jobs.get(job_id)
        end = row["finished_at"] if row and row["finished_at"] else rows[-1][8]
        allowed = 1 + _hits(faults, starts[0][8], end, lease)
        if len(starts) > allowed:
            report.fail(
                "runs of a job ≤ 1 + the faults that hit it",
                f"{job_id}: {len(starts)} runs, {allowed - 1} fault(s) overlapped its life",
                rows,
            )


def _atomic(report: Report, jobs: dict[str, Any], events: dict[str, list[tuple[Any, ...]]]) -> None:
    """An ``atomic=True`` job's effect is committed exactly once."""
    from .jobs import atomic_effect

    if atomic_effect is None:
        report.notes.append(
            "skipped: atomic=True not available (this package's @job does not take it): "
            "'atomic effects exactly once' was not checked"
        )
        return
    report.notes.append(
        f"atomic=True: {sum(1 for r in jobs.values() if r['name'] == 'chaos.atomic')} jobs checked"
    )
    for job_id, row in jobs.items():
        if row["name"] != "chaos.atomic":
            continue
        effects = [r for r in events.get(job_id, []) if r[2] == "effect"]
        if row["status"] == "completed" and len(effects) != 1:
            report.fail("atomic effects exactly once", f"{job_id}: {len(effects)} effects", effects)


def _outcomes(
    report: Report,
    jobs: dict[str, Any],
    results: dict[str, Any],
    events: dict[str, list[tuple[Any, ...]]],
) -> None:
    """The recorded result is the newest run's: its attempt is the job's last, and that run
    finished its work (its ``end`` row, or for an atomic job its ``effect``)."""
    for job_id, row in jobs.items():
        if row["status"] != "completed":
            continue
        result = results.get(job_id)
        attempt = result.get("attempt") if isinstance(result, dict) else None
        done = {r[3] for r in events.get(job_id, []) if r[2] in ("end", "effect")}
        if attempt != row["attempts"] or attempt not in done:
            report.fail(
                "no stale run's outcome overwrites a newer one",
                f"{job_id}: result of attempt {attempt}, job at attempt {row['attempts']}, "
                f"finished runs {sorted(done)}",
                _ledger_rows(job_id),
            )


def _groups(report: Report, jobs: dict[str, Any], events: dict[str, list[tuple[Any, ...]]]) -> None:
    """In a group, job k+1 first starts after the run that completed job k ended."""
    by_group: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for job_id, row in jobs.items():
        if row["name"] == "chaos.grouped":
            by_group[row["group"]].append((row["args"][1], job_id))
    for members in by_group.values():
        members.sort()
        for (seq, before), (_, after) in itertools.pairwise(members):
            done = [
                r
                for r in events.get(before, [])
                if r[2] == "end" and r[3] == jobs[before]["attempts"]
            ]
            starts = [r for r in events.get(after, []) if r[2] == "start"]
            if done and starts and starts[0][8] < done[0][8]:
                report.fail(
                    "group order held",
                    f"{after} started before {before} (seq {seq}) completed",
                    events[before] + events[after],
                )


def _waiters(report: Report, calls: list[dict[str, Any]], restarts: list[Applied]) -> None:
    """Every waiter got the right value or a timeout, within its timeout (plus a grace).
    A database error is allowed only while PostgreSQL restarted (the database is the
    truth: with it down, no answer is possible: the enqueue itself fails); never a failure
    (no job fails for good, the rolling deploy's included)."""
    counts: dict[str, int] = defaultdict(int)
    reasons: dict[str, int] = defaultdict(int)
    for call in calls:
        if call.get("call") != "wait":
            continue
        counts[call["outcome"]] += 1
        if call["outcome"] == "value":
            got = call["got"].get("v") if isinstance(call["got"], dict) else call["got"]
            if got != call["expected"]:
                report.wrong += 1
                report.fail(
                    "never a wrong value",
                    f"{call['job_id']}: got {call['got']!r}, expected {call['expected']}",
                    _ledger_rows(call["job_id"]),
                )
        if call["elapsed"] > call["timeout"] + WAIT_GRACE:
            report.fail(
                "every waiter answered within its timeout",
                f"{call['job_id']}: {call['outcome']} after {call['elapsed']} s "
                f"(timeout {call['timeout']} s) {call.get('error', '')}",
                _ledger_rows(call["job_id"]),
            )
        if call["outcome"] == "error" and not any(
            f.start - 1 <= call["at"] + call["elapsed"] and call["at"] <= f.end + 5
            for f in restarts
        ):
            report.fail(
                "every waiter answered with the right value or a timeout",
                f"{call['job_id']}: {call.get('error')} with the database up",
                _ledger_rows(call["job_id"]),
            )
        if call["outcome"] == "failed":
            report.fail(
                "every waiter answered with the right value or a timeout",
                f"{call['job_id']}: failed: {call.get('error')}",
                _ledger_rows(call["job_id"]),
            )
        if call["outcome"] in ("failed", "error"):
            error = re.sub(r"'[^']*' failed: ", "", str(call.get("error")))
            reasons[f"{call['outcome']}: {error[:120]}"] += 1
    report.waits = dict(counts)
    for reason, count in sorted(reasons.items()):
        report.notes.append(f"{count} waiter(s) {reason}")


def _ticks(report: Report, jobs: dict[str, Any], events: dict[str, list[tuple[Any, ...]]]) -> None:
    """Each tick is one job, run at or after its tick on the database's clock, and the
    minutes are consecutive (no tick skipped while workers ran)."""
    ticks = sorted(job_id for job_id, row in jobs.items() if row["name"] == "chaos.tick")
    moments = []
    for job_id in ticks:
        moment = _tick_time(job_id)
        moments.append(moment)
        starts = [r for r in events.get(job_id, []) if r[2] == "start"]
        if starts and starts[0][8] < moment:
            report.fail("schedules ticked once, on time", f"{job_id} ran before its tick", starts)
    for earlier, later in itertools.pairwise(moments):
        if later - earlier != timedelta(minutes=1):
            report.fail("schedules ticked once, on time", f"ticks {earlier} then {later}")
    report.notes.append(f"{len(ticks)} schedule tick(s)")


def _tick_time(job_id: str) -> datetime:
    """``schedule:<name>:<tick in UTC, ISO 8601>`` -> the tick."""
    stamp = job_id.split(":", 2)[2]
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _limits(report: Report, events: dict[str, list[tuple[Any, ...]]], lease: float) -> None:
    """At most LIMIT ``chaos.limited`` runs at once, counting the runs that held their
    lease throughout (started and ended within a lease: a run paused or cut off past its
    lease legitimately lost its slot)."""
    spans = []
    for rows in events.values():
        if not rows or rows[0][1] != "limited":
            continue
        by_attempt: dict[int, dict[str, Any]] = defaultdict(dict)
        for r in rows:
            by_attempt[r[3]][r[2]] = r
        for run in by_attempt.values():
            if "start" in run and "end" in run:
                start, end = run["start"][8], run["end"][8]
                if (end - start).total_seconds() < lease:
                    spans.append((start, end, run["start"]))
    points = sorted(
        [(s, 1, r) for s, _, r in spans] + [(e, -1, r) for _, e, r in spans],
        key=lambda p: (p[0], p[1]),
    )
    running: list[tuple[Any, ...]] = []
    for _, step, row in points:
        if step > 0:
            running.append(row)
            if len(running) > LIMIT:
                report.fail(
                    "limits never exceeded",
                    f"{len(running)} chaos.limited runs at once",
                    list(running),
                )
        else:
            running.remove(row)


def _completing_end(
    jobs: dict[str, Any], events: dict[str, list[tuple[Any, ...]]], job_id: str
) -> tuple[Any, ...] | None:
    """The ledger's ``end`` row of the run that completed ``job_id`` (its last attempt)."""
    row = jobs.get(job_id)
    if row is None or row["status"] != "completed":
        return None
    done = [r for r in events.get(job_id, []) if r[2] == "end" and r[3] == row["attempts"]]
    return done[0] if done else None


def _workflows(
    report: Report,
    jobs: dict[str, Any],
    events: dict[str, list[tuple[Any, ...]]],
    calls: list[dict[str, Any]],
) -> None:
    """Workflows (``chaos.step`` in chains and groups, each workflow in a batch whose
    ``on_complete`` is ``chaos.callback``): no child starts before all its parents
    completed; no job stays blocked after its parents ended; every batch callback ran
    exactly once, after every job of its batch ended, and the batch's counters match its
    jobs."""
    try:
        from django_jobqueue.models import JobBatch, JobDependency
        from django_jobqueue.querysets.batches import callback_id
    except ImportError:
        report.notes.append("skipped: workflows not available in this package")
        return
    links = JobDependency.objects.filter(child__name__startswith="chaos.").values_list(
        "child__job_id", "parent_job_id"
    )
    parents: dict[str, list[str]] = defaultdict(list)
    for child, parent in links:
        parents[child].append(parent)
    for child, its in parents.items():
        starts = [r for r in events.get(child, []) if r[2] == "start"]
        for parent in its:
            done = _completing_end(jobs, events, parent)
            if starts and (done is None or starts[0][8] < done[8]):
                report.fail(
                    "no child starts before all its parents completed",
                    f"{child} started at {starts[0][8]}, its parent {parent} "
                    + ("never completed" if done is None else f"completed at {done[8]}"),
                    events.get(parent, []) + events.get(child, []),
                )
    for job_id, row in jobs.items():
        if row["status"] == "blocked":
            waiting = {p: jobs[p]["status"] if p in jobs else "gone" for p in parents[job_id]}
            report.fail(
                "no job stays blocked after its parents ended",
                f"{job_id}: blocked after the drain, its parents {waiting}",
                _ledger_rows(job_id),
            )
    sealed = [c for c in calls if c.get("call") == "workflow" and c["outcome"] == "ok"]
    rows = {row.id: row for row in JobBatch.objects.filter(id__in=[c["batch"] for c in sealed])}
    callbacks = {job_id: row for job_id, row in jobs.items() if row["name"] == "chaos.callback"}
    for call in sealed:
        _batch(report, jobs, events, call, rows.get(call["batch"]), callback_id)
    expected = {callback_id(c["batch"], "on_complete") for c in sealed}
    for job_id in sorted(set(callbacks) - expected)[:10]:
        report.fail(
            "every batch callback ran exactly once",
            f"{job_id}: a callback of no sealed batch",
            _ledger_rows(job_id),
        )
    report.notes.append(
        f"workflows: {len(sealed)} batches of {sum(len(c['jobs']) for c in sealed)} jobs, "
        f"{len(parents)} children checked, {len(callbacks)} callbacks"
    )


def _batch(
    report: Report,
    jobs: dict[str, Any],
    events: dict[str, list[tuple[Any, ...]]],
    call: dict[str, Any],
    row: Any,
    callback_id: Any,
) -> None:
    """One sealed batch: its callback job exists, completed, started after every job of
    the batch ended, and is the callback of this batch; its counters match its jobs."""
    invariant = "every batch callback ran exactly once"
    batch_id, members = call["batch"], call["jobs"]
    job_id = callback_id(batch_id, "on_complete")
    callback = jobs.get(job_id)
    if row is None or not row.callbacks_done or callback is None:
        state = "no row" if row is None else f"callbacks_done={row.callbacks_done}"
        report.fail(invariant, f"{batch_id}: {state}, callback job {callback and 'exists'}")
        return
    if callback["args"] != [call["n"]]:
        report.fail(invariant, f"{job_id}: args {callback['args']}, batch of {call['n']}")
    starts = [r for r in events.get(job_id, []) if r[2] == "start"]
    ends = [done[8] for m in members if (done := _completing_end(jobs, events, m))]
    if starts and ends and starts[0][8] < max(ends):
        report.fail(
            invariant,
            f"{job_id} started at {starts[0][8]}, before its batch's last job ended ({max(ends)})",
            starts,
        )
    statuses = [jobs[m]["status"] if m in jobs else "gone" for m in members]
    counted = (row.total, row.completed, row.failed, row.cancelled)
    actual = (
        len(members),
        statuses.count("completed"),
        statuses.count("failed"),
        statuses.count("cancelled"),
    )
    if counted != actual:
        report.fail(
            invariant,
            f"{batch_id}: counters (total, completed, failed, cancelled) {counted}, "
            f"its jobs {actual}",
        )
