"""Cron expressions croniter reads but the scheduler cannot run.

February 30, April 31, a year that is past or too far ahead passed check E021; each worker
then logged a traceback every second, every schedule listed after the bad one stopped, and
the schedules admin page answered 500. croniter's random ``R`` fields picked another time on
each reading (24 runs in 3 hours instead of 3). Now ``check`` refuses both, and a schedule
that stops running later (its last year is over) is skipped on its own.
"""

from __future__ import annotations

import json
import logging
import signal
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from django_jobqueue import job
from django_jobqueue.checks import check_schedules
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import Job, Schedule
from django_jobqueue.periodic import Scheduler, ScheduleSpec
from django_jobqueue.registry import registry
from django_jobqueue.worker import Worker
from tests.conftest import wait_until
from tests.testapp.models import Execution

RECORD = "tests.testapp.jobs.record"
SCHEDULES = "/admin/django_jobqueue/schedule/"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "text"),
    [
        ("0 0 30 2 *", "never runs"),
        ("0 0 31 4 *", "never runs"),
        ("0 0 1 1 * 0 2020", "runs no more"),
        ("0 0 1 1 * 0 2099", "never runs"),
        ("R * * * *", "random field"),
        ("0 R(0-5) * * *", "random field"),
        ("R R * * *", "random field"),
    ],
)
@pytest.mark.django_db  # call_command("check"): SQLite's features read the database once
def test_check_refuses_what_can_never_run(settings, cron, text):
    entry = {"job": RECORD, "cron": cron, "args": ["x"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"bad": entry}}
    (error,) = check_schedules()
    assert error.id == "django_jobqueue.E021" and text in error.msg, error.msg
    assert "JOBQUEUE['SCHEDULE']['bad']['cron']" in error.msg and error.hint
    with pytest.raises(SystemCheckError, match="E021"):
        call_command("check")
    if text == "runs no more":
        return  # @job(schedule=...) takes it: see below
    with pytest.raises(InvalidJobError, match=text):
        job(name="tests.unrunnable.tick", schedule=cron)(lambda: None)


@pytest.fixture
def job_with_a_past_year():
    """A module with @job(schedule=...) whose last year is over still imports."""
    definition = job(name="tests.unrunnable.past", schedule="0 0 1 1 * 0 2020")(lambda: None)
    yield definition
    registry.unregister(definition.name)


@pytest.mark.django_db
def test_a_job_schedule_whose_year_is_over_imports_but_check_refuses_it(job_with_a_past_year):
    (error,) = check_schedules()
    assert error.id == "django_jobqueue.E021"
    assert "@job(schedule=...) of tests.unrunnable.past" in error.msg
    assert "runs no more" in error.msg and "2020-01-01T00:00:00Z" in error.msg
    with pytest.raises(ImproperlyConfigured, match="E021"):
        Worker()
    assert Worker(schedule=False).scheduler is None


@pytest.mark.parametrize(
    "cron", ["0 0 29 2 *", "0 0 31 * *", "0 9 * MAR,APR FRI", "0 0 1 1 * 0 2026-2030"]
)
def test_check_takes_what_runs_some_day(settings, cron):
    entry = {"job": RECORD, "cron": cron, "args": ["x"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"good": entry}}
    assert check_schedules() == []


@pytest.mark.django_db(transaction=True)
def test_a_schedule_past_its_last_tick_is_skipped_once_and_the_others_go_on(caplog):
    ended = ScheduleSpec("ended", RECORD, "0 12 1 5 * 0 2026", ["ended"])  # once: 2026-05-01
    later = ScheduleSpec("later", RECORD, "0 0 1 1 * 0 2027", ["later"])  # not begun yet
    minute = ScheduleSpec("every-minute", RECORD, "* * * * *", ["m"])
    since = utc(2026, 5, 1, 11, 0)
    for spec in (ended, later, minute):
        Schedule.objects.create(name=spec.name, job=RECORD, cron=spec.cron, since=since)
    scheduler = Scheduler([ended, later, minute], "default")
    with caplog.at_level(logging.INFO, logger="django_jobqueue.schedule"):
        for moment in (utc(2026, 5, 1, 12, 0, 30), utc(2026, 5, 1, 12, 1, 30)):
            assert 0 < scheduler.run(moment) <= 60
    ids = sorted(Job.objects.values_list("job_id", flat=True))
    assert ids == [
        "schedule:ended:2026-05-01T12:00:00Z",  # its last tick still ran, once
        "schedule:every-minute:2026-05-01T12:00:00Z",
        "schedule:every-minute:2026-05-01T12:01:00Z",
    ]
    skipped = [r for r in caplog.records if "cannot run" in r.getMessage()]
    assert len(skipped) == 1 and "schedule ended: skipped" in skipped[0].getMessage()
    assert "NoTick" in skipped[0].getMessage() and not skipped[0].exc_info


@pytest.mark.django_db
def test_the_admin_shows_a_bad_schedule_with_its_error(admin_client, settings):
    entry = {"job": RECORD, "cron": "0 0 30 2 *", "args": ["x"]}
    good = {"job": RECORD, "cron": "0 3 * * *", "args": ["y"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"feb30": entry, "nightly": good}}
    # A row from when the schedule was configured otherwise (or by a version that took it).
    Schedule.objects.create(name="feb30", job=RECORD, cron="0 0 30 2 *", since=timezone.now())
    response = admin_client.get(SCHEDULES)
    assert response.status_code == 200
    html = response.content.decode()
    assert "never runs" in html and "JOBQUEUE[&#x27;SCHEDULE&#x27;][&#x27;feb30&#x27;]" in html
    assert "error" in html and "nightly" in html and "active" in html


@pytest.mark.django_db
def test_the_admin_says_when_a_schedule_runs_no_more(admin_client, settings):
    """A schedule that passed the checks when the worker started and ran out since."""
    entry = {"job": RECORD, "cron": "0 0 1 1 * 0 2026-2027", "args": ["x"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"two-years": entry}}
    Schedule.objects.create(name="two-years", job=RECORD, cron=entry["cron"], since=utc(2026, 1, 1))
    from django_jobqueue.admin.schedules import ScheduleAdmin

    row = Schedule.objects.get()
    row.last_tick = utc(2027, 1, 1)  # its last tick ran
    admin = ScheduleAdmin(Schedule, None)
    admin._specs = {"two-years": ScheduleSpec("two-years", RECORD, entry["cron"], ["x"])}
    admin._problems = {}
    assert admin.next_run(row).startswith("never: ")


def _cron_at(moment: datetime) -> str:
    """A cron expression (seconds and year fields) with one tick: ``moment``, in UTC."""
    return (
        f"{moment.minute} {moment.hour} {moment.day} {moment.month} * {moment.second} {moment.year}"
    )


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_a_worker_skips_a_schedule_that_ran_out_and_serves_the_others(worker_processes):
    """A schedule with one tick a few seconds ahead (it passes the checks at start, then
    has no next tick), listed before a seconds schedule: the seconds schedule keeps its
    ticks, the one-tick schedule runs once and is logged once, with no traceback."""
    once_at = (timezone.now() + timedelta(seconds=4)).replace(microsecond=0)
    schedule = {
        "once": {"job": RECORD, "cron": _cron_at(once_at), "args": ["once"]},
        "every-second": {"job": RECORD, "cron": "* * * * * *", "args": ["tick"]},
    }
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps({"SCHEDULE": schedule})})
    wait_until(lambda: Execution.objects.filter(tag="tick").count() >= 2, timeout=30)
    wait_until(lambda: Execution.objects.filter(tag="once").exists(), timeout=30)
    after = Execution.objects.filter(tag="tick").count()
    wait_until(lambda: Execution.objects.filter(tag="tick").count() >= after + 3, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    log = worker_processes.log(proc)
    assert Execution.objects.filter(tag="once").count() == 1
    assert log.count("schedule once: skipped, it cannot run") == 1, log
    assert "Traceback" not in log, log
