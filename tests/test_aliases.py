"""Queues on several databases: ``JOBQUEUE["QUEUES"] = {"other": {"database": "queue"}}``
puts the jobs of the queue "other" on the second test database ("queue", tests/settings.py)
while every other queue stays on "default". Each verb goes to the job's database; a mix
that one transaction cannot hold is refused; ``status`` and the admin show both; a real
``runjobworker`` serves both with a worker process per database."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from django_jobqueue import cancel, get_job, pause_queue, routers
from django_jobqueue.batches import batch
from django_jobqueue.deadletters import requeue
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import DeadLetter, Job, QueuePause, WorkerHeartbeat
from django_jobqueue.pauses import paused_queues
from django_jobqueue.testing import enqueued, run_jobs
from django_jobqueue.worker import Worker
from tests.conftest import requires_redis, wait_until
from tests.testapp.jobs import add, always_fails, other_queue, record
from tests.testapp.models import Execution

BOTH = ["default", "queue"]
#: The queue "other" on the second database.
SPLIT = {"QUEUES": {"other": {"database": "queue"}}}


@pytest.fixture
def split(settings: Any) -> Any:
    settings.JOBQUEUE = {**settings.JOBQUEUE, **SPLIT}
    return settings


def _jobs(alias: str) -> list[str]:
    return sorted(Job.objects.using(alias).values_list("job_id", flat=True))


# -- routing ------------------------------------------------------------------------------


def test_a_queue_names_its_database(split):
    assert routers.queue_database("other") == "queue"
    assert routers.queue_database("default") == routers.queue_database() == "default"
    assert routers.queue_databases() == ["default", "queue"]
    assert routers.plan(None) == {"default": None, "queue": ["other"]}
    assert routers.plan(["other", "default", "x"]) == {
        "default": ["default", "x"],
        "queue": ["other"],
    }
    assert routers.serving(["other"]) == "queue"
    with pytest.raises(ImproperlyConfigured, match=r"on 2 databases \('default', 'queue'"):
        routers.serving(None)
    assert routers.QueueRouter().allow_migrate("queue", "django_jobqueue") is True


def test_without_the_key_there_is_one_database(settings):
    assert routers.queue_databases() == ["default"]
    assert routers.plan(None) == {"default": None}
    assert routers.queue_database("other") == "default"


@pytest.mark.django_db(databases=BOTH)
def test_an_entry_that_only_routes_sets_no_limit(split):
    from django_jobqueue.limits import rules

    assert rules() == {}
    handle = other_queue.enqueue(1)
    assert Job.objects.using("queue").get(job_id=handle.id).limit_key is None


# -- bad input: manage.py check ----------------------------------------------------------


def _ids() -> list[str]:
    return [
        m.id for m in run_checks(tags=["compatibility"]) if m.id.startswith("django_jobqueue.E0")
    ]


def test_a_correct_split_passes_the_checks(split):
    assert _ids() == []


def test_an_alias_not_in_databases_is_e054(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "QUEUES": {"other": {"database": "nowhere"}}}
    (error,) = [m for m in run_checks(tags=["compatibility"]) if m.id == "django_jobqueue.E054"]
    assert "['other']['database'] is 'nowhere'" in error.msg
    assert _ids() == ["django_jobqueue.E054"]


class _NoMigrations:
    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if app_label == "django_jobqueue" and db == "queue" else None


def test_an_alias_where_the_routers_refuse_migrations_is_e055(split):
    split.DATABASE_ROUTERS = [_NoMigrations(), "django_jobqueue.routers.QueueRouter"]
    assert _ids() == ["django_jobqueue.E055"]
    out = StringIO()
    with pytest.raises(Exception, match="E055"):
        call_command("check", stdout=out, stderr=out)


def test_a_database_that_is_not_a_str_is_e062(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "QUEUES": {"other": {"database": 2}}}
    (error,) = [m for m in run_checks(tags=["compatibility"]) if m.id == "django_jobqueue.E062"]
    assert "['database'] must be an alias of DATABASES" in error.msg
    assert routers.queue_aliases() == {}


# -- enqueue and every verb on the job's database ----------------------------------------


@pytest.mark.django_db(databases=BOTH)
def test_each_job_is_written_on_its_queues_database(split):
    there = other_queue.enqueue(7)
    here = add.enqueue(1, 2)
    assert _jobs("queue") == [there.id] and _jobs("default") == [here.id]
    assert get_job(there.id).queue == "other" and get_job(here.id).queue == "default"
    assert {job.id for job in enqueued()} == {there.id, here.id}
    assert [job.id for job in enqueued(queue="other")] == [there.id]
    assert run_jobs() == 2
    assert there.refresh().result == 7 and here.refresh().result == 3
    assert get_job(there.id).status == "completed"


@pytest.mark.django_db(databases=BOTH)
def test_cancel_finds_the_job_on_its_database(split):
    first, second = other_queue.enqueue(1), other_queue.enqueue(2)
    assert first.cancel() is True and first.status == "cancelled"
    assert cancel(second.id) is True  # by id alone: each database in turn
    assert set(Job.objects.using("queue").values_list("status", flat=True)) == {"cancelled"}
    assert cancel("no-such-job") is False


@pytest.mark.django_db(databases=BOTH)
def test_a_mixed_group_writes_nothing(split):
    from django_jobqueue.canvas import group

    with pytest.raises(InvalidJobError, match="Nothing was written"):
        group(add.bind(1, 1), other_queue.bind(2)).enqueue()
    assert _jobs("queue") == [] and _jobs("default") == []


@pytest.mark.django_db(databases=BOTH)
def test_a_parent_on_another_database_is_refused(split):
    parent = add.enqueue(1, 1)
    with pytest.raises(InvalidJobError, match=r"on 'queue': a parent and its children"):
        other_queue.using(after=[parent]).enqueue(1)
    assert _jobs("queue") == []


@pytest.mark.django_db(databases=BOTH)
def test_a_batch_holds_jobs_of_the_main_database_only(split):
    with (
        pytest.raises(InvalidJobError, match=r"batch\(\.\.\.\) holds jobs of the main"),
        batch(),
    ):
        other_queue.enqueue(1)
    assert _jobs("queue") == []


@pytest.mark.django_db(databases=BOTH)
def test_a_pause_is_kept_beside_its_queues_jobs(split):
    pause_queue("other", reason="maintenance")
    assert list(QueuePause.objects.using("queue").values_list("queue", flat=True)) == ["other"]
    assert not QueuePause.objects.using("default").exists()
    assert list(paused_queues()) == ["other"]
    job = other_queue.enqueue(1)
    assert run_jobs() == 0  # paused: the claim on "queue" reads the pause there
    assert job.refresh().status == "queued"


@pytest.mark.django_db(databases=BOTH)
def test_dead_letters_and_requeue_on_the_jobs_database(split, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    job = always_fails.using(queue="other", max_attempts=1).enqueue("no")
    run_jobs()
    assert job.refresh().status == "failed"
    letters = DeadLetter.objects.using("queue")
    assert list(letters.values_list("job_id", flat=True)) == [job.id]
    assert not DeadLetter.objects.using("default").exists()
    assert requeue(letters.all()) == 1
    assert job.refresh().status == "queued"


# -- enqueue() inside atomic() on another database ----------------------------------------


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_in_a_site_transaction_the_job_is_written_when_it_commits(split):
    with transaction.atomic():  # "default": the site's data, and the main queue database
        Execution.objects.create(tag="order", pid=0)
        here = add.enqueue(1, 1)  # joins this transaction
        there = other_queue.enqueue(2)
        assert _jobs("queue") == []  # waits for the commit on "default"
        assert there.status == "queued" and there.created
    assert _jobs("queue") == [there.id] and _jobs("default") == [here.id]
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        lost = other_queue.enqueue(3)
        1 / 0  # noqa: B018
    assert lost.id not in _jobs("queue")


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_eager_runs_the_job_on_its_database(split, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "EAGER": True}
    handle = other_queue.enqueue(5)
    assert (handle.status, handle.result) == ("completed", 5)
    assert Job.objects.using("queue").get(job_id=handle.id).status == "completed"


# -- a worker per database -----------------------------------------------------------------


def test_one_worker_serves_one_database(split):
    with pytest.raises(ImproperlyConfigured, match="one Worker serves one database"):
        Worker(["other", "default"])
    assert Worker(["other"]).using == "queue"
    assert Worker(["other"]).schedule is False  # the schedules live on the main database
    assert Worker(database="queue").queues is None


@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_an_in_process_worker_runs_the_jobs_of_its_database(split, run_worker):
    there, here = other_queue.enqueue(1), add.enqueue(2, 2)
    run_worker(queues=["other"])
    assert there.refresh().status == "completed" and here.refresh().status == "queued"
    run_worker(database="default")
    assert here.refresh().result == 4


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_runjobworker_serves_both_databases(split, worker_processes):
    handles = [record.enqueue("main-1"), record.using(queue="other").enqueue("split-1")]
    handles.append(record.using(queue="other").enqueue("split-2"))
    proc = worker_processes.start("--concurrency", "1", env={"DJQ_JOBQUEUE": json.dumps(SPLIT)})
    wait_until(
        lambda: all(h.refresh().status == "completed" for h in handles), timeout=60, interval=0.1
    )
    assert set(Execution.objects.values_list("tag", flat=True)) == {"main-1", "split-1", "split-2"}
    assert len(_jobs("queue")) == 2 and len(_jobs("default")) == 1
    log = worker_processes.log(proc)
    assert "serving queues on databases default, queue" in log
    assert log.count("worker process") >= 2  # one per database
    # Wake-ups still reach the worker of the second database.
    late = record.using(queue="other").enqueue("split-late")
    wait_until(lambda: late.refresh().status == "completed", timeout=30, interval=0.1)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_runjobworker_with_one_queue_serves_its_database_only(split, worker_processes):
    there, here = record.using(queue="other").enqueue("q-1"), record.enqueue("d-1")
    env = {"DJQ_JOBQUEUE": json.dumps(SPLIT)}
    worker_processes.start("--queue", "other", "--burst", env=env).wait(timeout=60)
    assert there.refresh().status == "completed" and here.refresh().status == "queued"


# -- status and the admin ------------------------------------------------------------------


@pytest.mark.django_db(databases=BOTH)
def test_status_shows_the_queues_of_every_database(split):
    other_queue.enqueue(1)
    add.enqueue(1, 1)
    out = StringIO()
    call_command("jobqueue", "status", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["databases"] == ["default", "queue"]
    found = {(q["database"], q["queue"]): q["counts"]["queued"] for q in report["queues"]}
    assert found == {("default", "default"): 1, ("queue", "other"): 1}
    assert report["total"]["counts"]["queued"] == 2
    out = StringIO()
    call_command("jobqueue", "status", stdout=out)
    assert "other @queue" in out.getvalue() and "default @default" in out.getvalue()


@pytest.mark.django_db(databases=BOTH)
def test_the_admin_shows_one_database_at_a_time(split, admin_client):
    there, here = other_queue.enqueue(1), add.enqueue(1, 1)
    url = reverse("admin:django_jobqueue_job_changelist")
    main = admin_client.get(url).content.decode()
    assert here.id in main and there.id not in main
    assert "default (main)" in main and "?database=queue" in main
    split_page = admin_client.get(url, {"database": "queue"}).content.decode()
    assert there.id in split_page and here.id not in split_page
    row = Job.objects.using("queue").get(job_id=there.id)
    change = reverse("admin:django_jobqueue_job_change", args=[row.pk])
    page = admin_client.get(change, {"_changelist_filters": "database=queue"})
    assert page.status_code == 200 and there.id in page.content.decode()
    letters = reverse("admin:django_jobqueue_deadletter_changelist")
    assert admin_client.get(letters, {"database": "queue"}).status_code == 200


@pytest.mark.django_db(databases=BOTH)
def test_the_admin_live_view_reads_the_rows_of_the_database_the_page_shows(split, admin_client):
    """Primary keys are per database: a live read of the "queue" list's rows must not answer
    with the main database's rows of the same pks (static/django_jobqueue/console.js sends
    the page's database)."""
    there, here = other_queue.enqueue(1), add.enqueue(1, 1)
    pk = Job.objects.using("queue").get(job_id=there.id).pk
    Job.objects.filter(job_id=here.id).update(id=pk)  # the same pk on both databases
    url = reverse("admin:django_jobqueue_job_live")
    on_queue = admin_client.get(url, {"rows": str(pk), "database": "queue"}).json()["rows"]
    on_main = admin_client.get(url, {"rows": str(pk)}).json()["rows"]
    assert on_queue[str(pk)]["cells"]["queue"] == "other"
    assert on_main[str(pk)]["cells"]["queue"] == "default"
    page = admin_client.get(url, {"job": str(pk), "database": "queue"}).json()["job"]
    assert there.id in page["fields"]["job_id"]


@pytest.mark.django_db(databases=BOTH)
@pytest.mark.parametrize("action", ["delete_selected", "cancel_selected"])
def test_the_admin_actions_act_on_the_database_the_list_shows(split, admin_client, action):
    """The console's actions (admin/bulk.py) run on the rows of the list's database, never on
    the main database's rows of the same pks."""
    there, here = other_queue.enqueue(1), add.enqueue(1, 1)
    pk = Job.objects.using("queue").get(job_id=there.id).pk
    Job.objects.filter(job_id=here.id).update(id=pk)  # the same pk on both databases
    url = reverse("admin:django_jobqueue_job_changelist") + "?database=queue"
    data = {"action": action, "index": "0", "_selected_action": [str(pk)], "post": "yes"}
    assert admin_client.post(url, data, follow=True).status_code == 200
    on_queue = Job.objects.using("queue").filter(job_id=there.id)
    assert not on_queue.exclude(status="cancelled").exists()
    assert Job.objects.get(job_id=here.id).status == "queued"


@pytest.mark.django_db(databases=BOTH)
def test_the_metrics_count_every_database(split, settings):
    """One scrape (metrics.QueueCollector) covers the queues of every database: their jobs,
    waits, dead letters and pauses."""
    pytest.importorskip("prometheus_client")
    from django_jobqueue.metrics import QueueCollector

    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    always_fails.using(queue="other", max_attempts=1).enqueue("no")
    run_jobs()
    other_queue.enqueue(1)
    add.enqueue(1, 1)
    pause_queue("other", reason="split")
    families = {family.name: family for family in QueueCollector().collect()}

    def samples(name: str) -> dict[tuple[str, ...], float]:
        return {tuple(s.labels.values()): s.value for s in families[name].samples}

    jobs = samples("jobqueue_jobs")
    assert jobs[("other", "queued")] == 1 and jobs[("other", "failed")] == 1
    assert jobs[("default", "queued")] == 1
    assert set(samples("jobqueue_oldest_waiting_seconds")) == {("other",), ("default",)}
    assert samples("jobqueue_dead_letter_rows") == {("other",): 1}
    assert samples("jobqueue_queue_paused")[("other",)] == 1


@pytest.mark.django_db(databases=BOTH)
def test_the_admin_lists_the_workers_of_each_database(split, admin_client):
    now = timezone.now()
    for alias in BOTH:
        WorkerHeartbeat.objects.using(alias).create(
            name=f"w-{alias}",
            host="h",
            pid=1,
            queues=[],
            concurrency=1,
            scheduling=False,
            started_at=now,
            last_seen=now,
        )
    url = reverse("admin:django_jobqueue_workerheartbeat_changelist")
    main = admin_client.get(url).content.decode()
    assert "w-default" in main and "w-queue" not in main and "?database=queue" in main
    other = admin_client.get(url, {"database": "queue"}).content.decode()
    assert "w-queue" in other and "w-default" not in other


@pytest.mark.django_db(databases=BOTH)
def test_retry_now_and_run_again_find_the_jobs_of_another_database(split, settings):
    from django_jobqueue.control import retry_now
    from django_jobqueue.rerunning import run_again

    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 3600}
    waiting = always_fails.using(queue="other", max_attempts=2).enqueue("later")
    run_jobs()
    assert waiting.refresh().status == "queued"  # its retry waits an hour
    assert retry_now([waiting.id]) == [waiting.id]
    assert Job.objects.using("queue").get(job_id=waiting.id).run_after is None
    done = other_queue.enqueue(1)
    run_jobs()
    report = run_again(Job.objects.using("queue").filter(job_id=done.id))
    (new_id,) = report.started.values()
    assert Job.objects.using("queue").filter(job_id=new_id, status="queued").exists()
    add.enqueue(1, 1)
    mixed = [Job.objects.using("queue").get(job_id=done.id), Job.objects.using("default").get()]
    with pytest.raises(ValueError, match="one database at a time"):
        run_again(mixed)


@pytest.mark.django_db(databases=BOTH)
def test_the_commands_reach_every_database(split, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    failed = always_fails.using(queue="other", max_attempts=1).enqueue("x")
    run_jobs()
    waiting = other_queue.enqueue(1)
    out = StringIO()
    call_command("jobqueue", "dead-letters", "--json", stdout=out)
    letters = json.loads(out.getvalue())
    assert [r["job_id"] for r in letters["latest"]] == [failed.id]
    out = StringIO()
    call_command("jobqueue", "requeue", "--queue", "other", stdout=out)
    assert "requeued 1 dead letters" in out.getvalue()
    assert failed.refresh().status == "queued"
    out = StringIO()
    call_command("jobqueue", "cancel", "--queue", "other", "--dry-run", stdout=out)
    assert "would cancel 2 queued jobs" in out.getvalue()
    call_command("jobqueue", "cancel", "--queue", "other", stdout=StringIO())
    assert waiting.refresh().status == "cancelled"
    out = StringIO()
    call_command("jobqueue", "prune", "--older-than", "0", stdout=out)
    first, second = out.getvalue().strip().splitlines()  # a line per database
    assert first.startswith("deleted 0 ") and first.endswith("(database 'default')")
    assert second.startswith("deleted 2 ") and second.endswith("(database 'queue')")
    assert _jobs("queue") == []


@pytest.mark.django_db(databases=BOTH)
def test_health_sees_a_backed_up_queue_on_the_second_database(split):
    from django.core.management.base import CommandError

    job = other_queue.enqueue(1)
    Job.objects.using("queue").filter(job_id=job.id).update(
        enqueued_at=timezone.now() - timedelta(hours=1)
    )
    with pytest.raises(CommandError, match=r"backed up: 'other' waited"):
        call_command(
            "jobqueue", "health", "--max-waiting", "60", "--min-workers", "0", stdout=StringIO()
        )


@requires_redis
@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True, databases=BOTH)
def test_wake_ups_reach_the_worker_of_each_database(split, worker_processes):
    """Both worker processes poll every 30 s: only a wake-up gets a job run in time. Each
    writes its heartbeat on its own database."""
    overrides = {**SPLIT, "POLL_INTERVAL": 30}
    split.JOBQUEUE = {**split.JOBQUEUE, **overrides}
    proc = worker_processes.start(env={"DJQ_JOBQUEUE": json.dumps(overrides)})
    wait_until(lambda: worker_processes.log(proc).count("worker started") == 2, timeout=30)
    for alias in BOTH:
        wait_until(lambda a=alias: WorkerHeartbeat.objects.using(a).exists(), timeout=10)
    handles = [record.using(queue="other").enqueue("woken-1"), record.enqueue("woken-2")]
    wait_until(lambda: all(h.refresh().status == "completed" for h in handles), timeout=10)


@pytest.mark.django_db(databases=BOTH)
def test_the_admin_overview_counts_every_database(split, admin_client):
    from django_jobqueue.admin.overview import build_overview

    other_queue.enqueue(1)
    other_queue.enqueue(2)
    add.enqueue(1, 1)
    overview = build_overview(timezone.now())
    queued = {row.queue: row.counts.get("queued", 0) for row in overview.queues}
    assert queued["other"] == 2 and queued["default"] == 1
    assert overview.total.counts["queued"] == 3
    page = admin_client.get(reverse("admin:django_jobqueue_job_overview"))
    assert page.status_code == 200 and "other" in page.content.decode()
