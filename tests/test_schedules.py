"""Periodic jobs: ticks in a time zone (daylight-saving edges on a fixed clock), the
once-per-tick guard, missed ticks, pause/resume/run now, checks and startup errors, and real
worker processes across tick boundaries."""

from __future__ import annotations

import json
import logging
import re
import signal
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.urls import reverse
from django.utils import timezone

from django_jobqueue import job, periodic
from django_jobqueue.checks import check_schedules
from django_jobqueue.cron import latest_tick, next_tick
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import Job, Schedule
from django_jobqueue.periodic import Scheduler, ScheduleSpec
from django_jobqueue.registry import registry
from django_jobqueue.worker import Worker
from tests.conftest import wait_until
from tests.testapp.models import Execution

PARIS = ZoneInfo("Europe/Paris")
RECORD = "tests.testapp.jobs.record"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def run_ticks(expression: str, start: datetime, count: int, zone=PARIS) -> list[str]:
    ticks, tick = [], start
    for _ in range(count):
        tick = next_tick(expression, tick, zone)
        ticks.append(tick.astimezone(zone).strftime("%H:%M%z"))
    return ticks


# -- daylight saving, on a fixed clock --------------------------------------------------------


def test_spring_forward_a_skipped_time_ticks_once_at_the_change():
    """2026-03-29, Europe/Paris: 02:00 CET jumps to 03:00 CEST (01:00 UTC)."""
    before = utc(2026, 3, 28, 23, 0)  # 00:00 CET
    # A daily 02:30 does not exist that day: it runs when the clock jumps over it.
    assert run_ticks("30 2 * * *", before, 2) == ["03:00+0200", "02:30+0200"]
    # Every 15 minutes: 02:00-02:45 and 03:00 are one instant, so one tick, then 03:15.
    assert run_ticks("*/15 * * * *", utc(2026, 3, 29, 0, 30), 4) == [
        "01:45+0100",
        "03:00+0200",
        "03:15+0200",
        "03:30+0200",
    ]
    # At the change, the latest due tick is the change itself, whatever the expression.
    assert latest_tick("30 2 * * *", utc(2026, 3, 29, 1, 0), PARIS) == utc(2026, 3, 29, 1, 0)
    assert latest_tick("30 2 * * *", utc(2026, 3, 29, 0, 59), PARIS) == utc(2026, 3, 28, 1, 30)


def test_fall_back_a_repeated_time_ticks_once_at_its_first_occurrence():
    """2026-10-25, Europe/Paris: 03:00 CEST falls back to 02:00 CET (01:00 UTC)."""
    before = utc(2026, 10, 24, 22, 0)  # 00:00 CEST
    # A daily 02:30 runs once, in summer time, and the next day at 02:30 CET.
    assert run_ticks("30 2 * * *", before, 2) == ["02:30+0200", "02:30+0100"]
    # Every 15 minutes: the first pass of 02:00-02:45 only, then 03:00 CET.
    assert run_ticks("*/15 * * * *", utc(2026, 10, 25, 0, 40), 3) == [
        "02:45+0200",
        "03:00+0100",
        "03:15+0100",
    ]
    # During the second pass (02:40 CET) the latest tick is still the first pass's 02:45.
    assert latest_tick("*/15 * * * *", utc(2026, 10, 25, 1, 40), PARIS) == utc(2026, 10, 25, 0, 45)
    assert latest_tick("30 2 * * *", utc(2026, 10, 25, 1, 40), PARIS) == utc(2026, 10, 25, 0, 30)


@pytest.mark.django_db(transaction=True)
def test_a_repeated_hour_enqueues_each_tick_once_on_a_fixed_clock(settings):
    settings.TIME_ZONE = "Europe/Paris"
    spec = ScheduleSpec("quarterly", RECORD, "*/15 * * * *", ["q"])
    Schedule.objects.create(name="quarterly", job=RECORD, cron=spec.cron, since=utc(2026, 10, 24))
    scheduler = Scheduler([spec], "default")
    # Every minute through both passes of 02:00-03:00 (00:00-02:00 UTC) and a bit beyond.
    moment = utc(2026, 10, 24, 23, 50)
    while moment <= utc(2026, 10, 25, 2, 20):
        scheduler.run(moment)
        moment += timedelta(minutes=1)
    # 01:45 CEST (the latest tick at the first run), 02:00-02:45 CEST (first pass only:
    # nothing from 01:00 to 02:00 UTC), then 03:00 and 03:15 CET.
    expected = [
        "2026-10-24T23:45:00Z",
        *(f"2026-10-25T00:{minute:02d}:00Z" for minute in (0, 15, 30, 45)),
        "2026-10-25T02:00:00Z",
        "2026-10-25T02:15:00Z",
    ]
    ids = sorted(Job.objects.values_list("job_id", flat=True))
    assert ids == [f"schedule:quarterly:{tick}" for tick in expected]


@pytest.mark.django_db(transaction=True)
def test_a_skipped_hour_enqueues_one_tick_at_the_change_on_a_fixed_clock(settings):
    settings.TIME_ZONE = "Europe/Paris"
    spec = ScheduleSpec("nightly", RECORD, "30 2 * * *", ["n"])
    since = utc(2026, 3, 28, 22, 0)
    Schedule.objects.create(name="nightly", job=RECORD, cron=spec.cron, since=since)
    scheduler = Scheduler([spec], "default")
    moment = utc(2026, 3, 28, 23, 0)
    while moment <= utc(2026, 3, 29, 4, 0):
        scheduler.run(moment)
        moment += timedelta(minutes=5)
    assert list(Job.objects.values_list("job_id", flat=True)) == [
        "schedule:nightly:2026-03-29T01:00:00Z"
    ]


# -- the guard, missed ticks, pause ---------------------------------------------------------------


@pytest.fixture
def every_minute(transactional_db):
    spec = ScheduleSpec("every-minute", RECORD, "* * * * *", ["m"])
    since = utc(2026, 5, 1, 11, 59, 30)
    Schedule.objects.create(name=spec.name, job=RECORD, cron=spec.cron, since=since)
    return spec


def test_each_tick_is_enqueued_once_by_racing_schedulers(every_minute):
    now = utc(2026, 5, 1, 12, 0, 30)
    handles = [periodic.enqueue_tick(every_minute, utc(2026, 5, 1, 12, 0), now) for _ in range(3)]
    assert [h is not None for h in handles] == [True, False, False]
    assert handles[0].id == "schedule:every-minute:2026-05-01T12:00:00Z"
    row = Schedule.objects.get()
    assert (row.last_tick, row.last_job_id) == (utc(2026, 5, 1, 12, 0), handles[0].id)


def test_a_tick_is_not_run_again_once_its_job_is_pruned(every_minute, run_worker):
    """The Schedule row guards the tick, not the job row: past its result_ttl the job is
    pruned, and the same latest tick must not be enqueued again."""
    tick = utc(2026, 5, 1, 12, 0)
    assert periodic.enqueue_tick(every_minute, tick, tick + timedelta(seconds=1))
    run_worker()
    assert Execution.objects.filter(tag="m").count() == 1
    Job.objects.all().delete()  # what pruning does after result_ttl
    assert periodic.enqueue_tick(every_minute, tick, tick + timedelta(seconds=50)) is None
    assert not Job.objects.exists()


def test_missed_ticks_run_the_latest_once_and_log_the_skipped(every_minute, caplog):
    Schedule.objects.update(last_tick=utc(2026, 5, 1, 12, 0))
    now = utc(2026, 5, 1, 12, 10, 20)  # down from 12:00:xx to 12:10:20: 12:01 .. 12:09 missed
    with caplog.at_level(logging.WARNING, logger="django_jobqueue.schedule"):
        Scheduler([every_minute], "default").run(now)
        Scheduler([every_minute], "default").run(now)  # a second worker: nothing more
    assert list(Job.objects.values_list("job_id", flat=True)) == [
        "schedule:every-minute:2026-05-01T12:10:00Z"
    ]
    assert "9 missed tick(s) between 2026-05-01T12:00:00Z and 2026-05-01T12:10:00Z" in caplog.text


def test_a_new_schedule_starts_with_the_next_tick(db):
    spec = ScheduleSpec("fresh", RECORD, "0 3 * * *", ["f"])
    periodic.sync([spec])
    Scheduler([spec], "default").run()  # today's 03:00 is before the schedule existed
    assert not Job.objects.exists()
    row = Schedule.objects.get()
    assert (row.job, row.cron, row.paused, row.last_tick) == (RECORD, "0 3 * * *", False, None)


def test_pause_skips_ticks_and_resume_counts_from_then(every_minute):
    assert periodic.set_paused(["every-minute"], True) == 1
    assert periodic.enqueue_tick(every_minute, timezone.now(), timezone.now()) is None
    assert periodic.set_paused(["every-minute"], False) == 1
    row = Schedule.objects.get()
    past = row.since - timedelta(seconds=1)
    assert periodic.enqueue_tick(every_minute, past, timezone.now()) is None  # paused then
    future = row.since + timedelta(seconds=1)
    assert periodic.enqueue_tick(every_minute, future, future) is not None


def test_a_changed_cron_counts_from_the_change(every_minute):
    periodic.sync([ScheduleSpec("every-minute", RECORD, "*/5 * * * *", ["m"])])
    row = Schedule.objects.get()
    assert row.cron == "*/5 * * * *"
    assert row.since > timezone.now() - timedelta(minutes=1)


def test_run_now_enqueues_an_extra_run_with_its_own_id(every_minute):
    first = periodic.run_now(every_minute)
    second = periodic.run_now(every_minute)
    assert first.id != second.id
    assert re.fullmatch(r"schedule:every-minute:manual:\S+Z:[0-9a-f]{8}", first.id)
    assert Schedule.objects.get().last_job_id == second.id
    assert Schedule.objects.get().last_tick is None  # the ticks are untouched


# -- configuration: checks, startup, @job(schedule=...) ---------------------------------------


def ids(errors):
    return [error.id for error in errors]


@pytest.mark.parametrize(
    ("entry", "check_id", "text"),
    [
        ({"job": RECORD, "cron": "61 * * * *", "args": ["x"]}, "E021", "not a valid cron"),
        ({"job": "tests.testapp.jobs.recrod", "cron": "* * * * *"}, "E022", "'tests.testapp"),
        ({"job": RECORD, "cron": "* * * * *", "kwrags": {}}, "E020", "Did you mean 'kwargs'"),
        ({"job": RECORD, "cron": "* * * * *"}, "E023", "cannot be enqueued"),
        ({"job": RECORD, "cron": "* * * * *", "args": [{1, 2}]}, "E023", "cannot be enqueued"),
        ({"cron": "* * * * *"}, "E020", "has no 'job'"),
        ({"job": RECORD, "cron": "* * * * *", "args": ["x"], "queue": "a b"}, "E020", "queue"),
    ],
)
def test_checks_refuse_a_bad_schedule(settings, entry, check_id, text):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"bad": entry}}
    errors = check_schedules()
    assert ids(errors) == [f"django_jobqueue.{check_id}"], errors
    assert text in errors[0].msg + (errors[0].hint or "")
    assert errors[0].hint
    with pytest.raises(SystemCheckError, match=check_id):
        call_command("check")


def test_unknown_job_suggests_the_registered_name(settings):
    entry = {"job": "tests.testapp.jobs.recrod", "cron": "* * * * *"}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"bad": entry}}
    (error,) = check_schedules()
    assert "Did you mean 'tests.testapp.jobs.record'?" in error.hint


def test_a_good_schedule_passes_the_checks(settings):
    entry = {"job": RECORD, "cron": "0 3 * * *", "args": ["x"], "queue": "reports"}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"nightly": entry}}
    assert check_schedules() == []
    (spec,) = periodic.configured()
    assert (spec.name, spec.job, spec.queue, spec.args) == ("nightly", RECORD, "reports", ["x"])


@pytest.mark.django_db
def test_a_worker_refuses_to_start_on_a_bad_schedule_unless_told_not_to_schedule(settings):
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "SCHEDULE": {"bad": {"job": "no.such.job", "cron": "* * * * *"}},
    }
    with pytest.raises(ImproperlyConfigured, match=r"E022.*'no.such.job'"):
        Worker()
    assert Worker(schedule=False).scheduler is None


@pytest.fixture
def scheduled_job():
    made = []

    def make(**options):
        definition = job(name="tests.scheduled.tick", **options)(lambda: None)
        made.append(definition.name)
        return definition

    yield make
    for name in made:
        registry.unregister(name)


def test_job_schedule_option(scheduled_job):
    scheduled_job(schedule="*/15 * * * *")
    specs = periodic.specs_by_name()
    assert specs["tests.scheduled.tick"].cron == "*/15 * * * *"
    with pytest.raises(InvalidJobError, match="not a valid cron expression"):
        job(name="tests.scheduled.bad", schedule="*/15 * *")(lambda: None)
    with pytest.raises(InvalidJobError, match="must take none"):
        job(name="tests.scheduled.args", schedule="* * * * *")(lambda x: x)
    assert "tests.scheduled.bad" not in registry and "tests.scheduled.args" not in registry


def test_a_setting_cannot_take_the_name_of_a_scheduled_job(settings, scheduled_job):
    scheduled_job(schedule="0 * * * *")
    entry = {"job": RECORD, "cron": "* * * * *", "args": ["x"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"tests.scheduled.tick": entry}}
    assert ids(check_schedules()) == ["django_jobqueue.E020"]


# -- the admin -----------------------------------------------------------------------------------

SCHEDULES = "/admin/django_jobqueue/schedule/"


@pytest.fixture
def nightly(settings):
    entry = {"job": RECORD, "cron": "0 3 * * *", "args": ["admin"]}
    settings.JOBQUEUE = {**settings.JOBQUEUE, "SCHEDULE": {"nightly": entry}}


def test_admin_lists_schedules_with_last_and_next_run(admin_client, nightly):
    html = admin_client.get(SCHEDULES).content.decode()
    assert "nightly" in html and "0 3 * * *" in html and "active" in html
    row = Schedule.objects.get(name="nightly")
    assert admin_client.get(reverse("admin:django_jobqueue_schedule_change", args=[row.pk]))
    assert admin_client.get(f"{SCHEDULES}{row.pk}/change/").status_code == 200


def test_admin_pause_resume_and_run_now(admin_client, nightly):
    admin_client.get(SCHEDULES)  # makes the row
    post = {"_selected_action": ["nightly"], "index": 0}
    response = admin_client.post(SCHEDULES, {**post, "action": "pause"}, follow=True)
    assert "Paused 1 schedule(s)" in response.content.decode()
    assert Schedule.objects.get().paused
    assert "paused" in admin_client.get(SCHEDULES).content.decode()
    admin_client.post(SCHEDULES, {**post, "action": "resume"})
    assert not Schedule.objects.get().paused
    response = admin_client.post(SCHEDULES, {**post, "action": "run_now"}, follow=True)
    (queued,) = Job.objects.all()
    assert queued.job_id.startswith("schedule:nightly:manual:") and queued.args == ["admin"]
    assert f"Enqueued 1 extra run(s): {queued.job_id}" in response.content.decode()
    # The last run links to its job, read in the list's one query.
    html = admin_client.get(SCHEDULES).content.decode()
    assert reverse("admin:django_jobqueue_job_change", args=[queued.pk]) in html


def test_admin_actions_need_the_change_permission(client, db, nightly):
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(user)
    assert client.get(SCHEDULES).status_code == 200
    post = {"_selected_action": ["nightly"], "index": 0}
    for action in ("run_now", "pause"):
        client.post(SCHEDULES, {**post, "action": action})
    assert not Job.objects.exists()
    assert not Schedule.objects.get().paused


# -- real worker processes ---------------------------------------------------------------------

EVERY_SECOND = {"every-second": {"job": RECORD, "cron": "* * * * * *", "args": ["tick"]}}
TICK_LINE = re.compile(r"schedule every-second: tick (\S+) enqueued")


def scheduling_env(**extra):
    return {"DJQ_JOBQUEUE": json.dumps({"SCHEDULE": EVERY_SECOND, **extra})}


def tick_jobs():
    return list(
        Job.objects.filter(job_id__startswith="schedule:every-second:")
        .order_by("job_id")
        .values_list("job_id", "status", "attempts")
    )


@pytest.mark.subprocess
def test_three_workers_enqueue_each_tick_exactly_once(worker_processes):
    """A seconds schedule: three workers race for every tick for a few seconds."""
    procs = [worker_processes.start(env=scheduling_env()) for _ in range(3)]
    wait_until(lambda: sum(1 for j in tick_jobs() if j[1] == "completed") >= 5, timeout=30)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(timeout=20) == 0
    jobs = tick_jobs()
    labels = [job_id.split(":", 2)[2] for job_id, _, _ in jobs]
    seconds = [datetime.strptime(label, "%Y-%m-%dT%H:%M:%SZ") for label in labels]
    # Consecutive seconds: no tick skipped while workers ran, none doubled.
    assert seconds == [seconds[0] + timedelta(seconds=i) for i in range(len(seconds))], labels
    assert all(attempts == 1 for _, status, attempts in jobs if status == "completed")
    completed = sum(1 for _, status, _ in jobs if status == "completed")
    assert Execution.objects.filter(tag="tick").count() == completed
    # Each tick was enqueued by exactly one of the workers (the others found it taken).
    enqueued = [tick for proc in procs for tick in TICK_LINE.findall(worker_processes.log(proc))]
    assert sorted(enqueued) == labels
    assert len(set(enqueued)) == len(enqueued)


@pytest.mark.subprocess
def test_a_worker_back_after_missed_ticks_runs_the_latest_once(worker_processes):
    first = worker_processes.start(env=scheduling_env())
    wait_until(lambda: tick_jobs(), timeout=20)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    last = tick_jobs()[-1][0]
    last_tick = datetime.strptime(last.split(":", 2)[2], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # Let three ticks pass with no worker running (waiting on the clock, not on a worker).
    wait_until(lambda: timezone.now() >= last_tick + timedelta(seconds=4), timeout=10)
    before = {job_id for job_id, _, _ in tick_jobs()}
    second = worker_processes.start(env=scheduling_env())
    wait_until(lambda: "missed tick(s)" in worker_processes.log(second), timeout=20)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=20) == 0
    log = worker_processes.log(second)
    match = re.search(r"(\d+) missed tick\(s\) between (\S+) and (\S+) skipped", log)
    assert match and int(match.group(1)) >= 3 and match.group(2) == last.split(":", 2)[2]
    latest = f"schedule:every-second:{match.group(3)}"
    new = sorted({job_id for job_id, _, _ in tick_jobs()} - before)
    assert new[0] == latest  # the first tick it enqueued: the latest missed one, once
    skipped = last_tick + timedelta(seconds=1)
    assert f"schedule:every-second:{skipped:%Y-%m-%dT%H:%M:%SZ}" not in new


@pytest.mark.subprocess
def test_no_schedule_worker_enqueues_no_ticks(worker_processes):
    proc = worker_processes.start("--no-schedule", env=scheduling_env())
    wait_until(lambda: "schedules=off" in worker_processes.log(proc), timeout=20)
    from tests.testapp.jobs import add

    handle = add.enqueue(1, 2)
    wait_until(lambda: handle.refresh().status == "completed", timeout=20)
    started = timezone.now()
    wait_until(lambda: timezone.now() >= started + timedelta(seconds=2), timeout=5)
    assert tick_jobs() == []
    assert proc.poll() is None


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        ({"job": RECORD, "cron": "* 25 * * *", "args": ["x"]}, "django_jobqueue.E021"),
        ({"job": "tests.testapp.jobs.nope", "cron": "* * * * *"}, "django_jobqueue.E022"),
    ],
)
def test_a_bad_schedule_stops_the_worker_at_startup(worker_processes, schedule, text):
    env = {"DJQ_JOBQUEUE": json.dumps({"SCHEDULE": {"broken": schedule}})}
    proc = worker_processes.start(env=env)
    assert proc.wait(timeout=30) != 0
    log = worker_processes.log(proc)
    assert text in log and "broken" in log
    assert "worker started" not in log


def test_schedules_work_without_use_tz(settings, every_minute):
    """With USE_TZ = False the database holds naive local times (TIME_ZONE)."""
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Paris"
    Schedule.objects.update(since=datetime(2026, 5, 1, 13, 59))  # 11:59 UTC, naive local
    now = datetime(2026, 5, 1, 14, 0, 30)  # naive local: 12:00:30 UTC
    Scheduler([every_minute], "default").run(now)
    assert list(Job.objects.values_list("job_id", flat=True)) == [
        "schedule:every-minute:2026-05-01T12:00:00Z"
    ]
    assert Schedule.objects.get().last_tick == datetime(2026, 5, 1, 14, 0)
    Scheduler([every_minute], "default").run(now)  # the tick is taken
    assert Job.objects.count() == 1
