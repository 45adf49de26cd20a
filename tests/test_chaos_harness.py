"""The chaos harness's own pieces that need no root: the seeded fault schedule and the
checker's verdicts on ledger rows that break an invariant (the harness itself runs with
``scripts/chaos``; see docs/guide/chaos.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.chaos import check, faults


def test_the_same_seed_gives_the_same_fault_schedule():
    first = faults.schedule(7, 150, 3, 4.0)
    assert first == faults.schedule(7, 150, 3, 4.0)
    assert [f.params for f in first] == [f.params for f in faults.schedule(7, 150, 3, 4.0)]
    assert first != faults.schedule(8, 150, 3, 4.0)


def test_every_fault_kind_is_in_a_quick_run_and_all_end_inside_the_window():
    plan = faults.schedule(1, 150, 3, 4.0)
    assert {f.kind for f in plan} >= set(faults.HOST_KINDS) | set(faults.SERVICE_KINDS)
    assert all(3.0 <= f.at <= 150 * 0.85 for f in plan)
    assert all(0 <= f.host < 3 for f in plan if f.kind in faults.HOST_KINDS)
    stops = [f for f in plan if f.kind == "stop"]
    assert all(f.duration >= 1.5 * 4.0 for f in stops)  # paused past the lease
    assert not {f.kind for f in faults.schedule(1, 150, 3, 4.0, services=False)} & set(
        faults.SERVICE_KINDS
    )


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _row(job_id, kind, event, attempt, seconds, grp="", seq=0):
    return (job_id, kind, event, attempt, "h0", 1, grp, seq, T0 + timedelta(seconds=seconds))


def test_a_wrong_value_a_late_answer_and_an_error_with_the_database_up_are_violations(
    db, monkeypatch
):
    monkeypatch.setattr(check, "_ledger_rows", lambda job_id: [])
    report = check.Report()
    calls = [
        {"call": "wait", "job_id": "ok", "outcome": "value", "got": {"v": 4}, "expected": 4,
         "elapsed": 1.0, "timeout": 8, "at": 100.0},
        {"call": "wait", "job_id": "wrong", "outcome": "value", "got": {"v": 5}, "expected": 4,
         "elapsed": 1.0, "timeout": 8, "at": 100.0},
        {"call": "wait", "job_id": "late", "outcome": "timeout", "elapsed": 12.0, "timeout": 8,
         "expected": 4, "at": 100.0},
        {"call": "wait", "job_id": "down", "outcome": "error", "error": "OperationalError",
         "elapsed": 0.5, "timeout": 8, "expected": 4, "at": 200.0},
        {"call": "wait", "job_id": "up", "outcome": "error", "error": "OperationalError",
         "elapsed": 0.5, "timeout": 8, "expected": 4, "at": 500.0},
        {"call": "wait", "job_id": "deploy", "outcome": "failed", "elapsed": 0.5, "timeout": 8,
         "error": "JobNotRegistered: No job is registered as 'chaos.fresh'.", "expected": 4,
         "at": 300.0},
    ]  # fmt: skip
    check._waiters(report, calls, [check.Applied("pg-restart", -1, 199.0, 201.0)])
    assert report.wrong == 1
    assert sorted(v.detail.split(":")[0] for v in report.violations) == [
        "deploy",
        "late",
        "up",
        "wrong",
    ]


def test_a_dead_letter_of_the_rolling_deploy_is_a_violation(db, monkeypatch):
    from model_bakery import baker

    monkeypatch.setattr(check, "_ledger_rows", lambda job_id: [])
    report = check.Report()
    check._dead_letters(report)
    assert not report.violations
    baker.make_recipe(
        "tests.dead_letter",
        job_id="fresh-1",
        name="chaos.fresh",
        error="JobNotRegistered: No job is registered as 'chaos.fresh'.",
    )
    check._dead_letters(report)
    assert [(v.invariant, v.detail.split(" ")[0]) for v in report.violations] == [
        ("no job dead-lettered", "fresh-1")
    ]


def test_three_limited_runs_at_once_break_the_limit_of_two():
    events = {
        f"j{i}": [
            _row(f"j{i}", "limited", "start", 1, i * 0.1),
            _row(f"j{i}", "limited", "end", 1, 1),
        ]
        for i in range(3)
    }
    report = check.Report()
    check._limits(report, events, lease=4.0)
    assert [v.invariant for v in report.violations] == ["limits never exceeded"]
    report = check.Report()
    check._limits(report, {k: v for k, v in events.items() if k != "j2"}, lease=4.0)
    assert report.violations == []


def test_a_group_job_started_before_its_predecessor_completed_breaks_the_order():
    jobs = {
        "a": {"name": "chaos.grouped", "group": "g", "args": ["g", 0], "attempts": 1},
        "b": {"name": "chaos.grouped", "group": "g", "args": ["g", 1], "attempts": 1},
    }
    events = {
        "a": [
            _row("a", "grouped", "start", 1, 0, "g", 0),
            _row("a", "grouped", "end", 1, 2, "g", 0),
        ],
        "b": [
            _row("b", "grouped", "start", 1, 1, "g", 1),
            _row("b", "grouped", "end", 1, 3, "g", 1),
        ],
    }
    report = check.Report()
    check._groups(report, jobs, events)
    assert [v.invariant for v in report.violations] == ["group order held"]
    events["b"] = [_row("b", "grouped", "start", 1, 2.5, "g", 1)]
    report = check.Report()
    check._groups(report, jobs, events)
    assert report.violations == []


def test_a_tick_id_gives_its_moment():
    moment = check._tick_time("schedule:chaos.tick:2026-12-01T12:35:00Z")
    assert moment == datetime(2026, 12, 1, 12, 35, tzinfo=UTC)
