"""One lifecycle, declared once in ``django_jobqueue.base``: the statuses and their moves, the
endings of an attempt and a job's fields, and every place that derives from them (the log
line, the signals, the metrics, the admin's overview, ``jobqueue status``, dead letters and
requeue)."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import deadletters, signals, stats
from django_jobqueue.admin.deadletters import DEAD_LETTER_JOB_FIELDS
from django_jobqueue.admin.display import STATUS_COLOURS
from django_jobqueue.backend import STATUSES
from django_jobqueue.base import (
    ACTIVE,
    DEAD_LETTER_FIELDS,
    FINISHED,
    INITIAL_STATUS,
    MOVES,
    REQUEUE_FRESH_FIELDS,
    ClaimedJob,
    Ending,
    NewJob,
    Status,
)
from django_jobqueue.management.commands.jobqueue import status_report
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.worker.endings import log
from django_jobqueue.worker.outcomes import Outcome
from tests.conftest import wait_until
from tests.testapp.jobs import add, always_fails, naps

# -- the statuses and their moves -----------------------------------------------------------


def test_the_moves_cover_every_status_and_every_ending_is_one_move_from_running():
    reachable = {INITIAL_STATUS}
    frontier = [INITIAL_STATUS]
    while frontier:
        for after in MOVES.get(frontier.pop(), ()):
            if after not in reachable:
                reachable.add(after)
                frontier.append(after)
    assert reachable == set(Status.values)
    assert set(ACTIVE) | set(FINISHED) == set(Status.values)
    assert not set(ACTIVE) & set(FINISHED)
    for ending in Ending:
        assert ending.status is None or ending.status in MOVES[Status.RUNNING]
        assert ending.finished == (ending.status in FINISHED)


def _one_job_per_status(queue: str) -> None:
    now = timezone.now()
    for status in Status.values:
        Job.objects.create(
            job_id=f"{queue}-{status}",
            name=add.name,
            queue=queue,
            status=status,
            max_attempts=1,
            result_ttl=3600,
            finished_at=now if status in FINISHED else None,
            expires_at=now + timedelta(hours=1) if status in FINISHED else None,
        )


class _Tables(HTMLParser):
    """The cells of the overview's table: ``headings`` (``thead``) and ``rows`` of ``tbody``,
    each row a list of ``(tag, attributes, text)``."""

    def __init__(self) -> None:
        super().__init__()
        self._inside = False
        self.headings: list[str] = []
        self.rows: list[list[tuple[str, dict[str, str | None], str]]] = []
        self._part = ""
        self._cell: tuple[str, dict[str, str | None]] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._inside = "djq-overview" in (dict(attrs).get("class") or "")
        if not self._inside:
            return
        if tag in ("thead", "tbody"):
            self._part = tag
        elif tag == "tr" and self._part == "tbody":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell, self._text = (tag, dict(attrs)), ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        if tag in ("th", "td") and self._cell is not None:
            text = " ".join(self._text.split())
            if self._part == "thead":
                self.headings.append(text)
            else:
                self.rows[-1].append((*self._cell, text))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data


def _overview(admin_client) -> _Tables:
    response = admin_client.get(reverse("admin:django_jobqueue_job_overview"))
    assert response.status_code == 200
    tables = _Tables()
    tables.feed(response.content.decode())
    return tables


@pytest.mark.django_db
def test_the_overview_has_a_heading_per_status_and_as_many_cells_per_row(admin_client):
    _one_job_per_status("walk")
    tables = _overview(admin_client)
    labels = [str(label) for label in Status.labels]
    start = tables.headings.index("Queue") + 1
    assert tables.headings[start : start + len(labels)] == labels
    assert tables.headings[start + len(labels)] == "Dead letters"
    rows = [row for row in tables.rows if not any("colspan" in cell[1] for cell in row)]
    assert len(rows) >= 2  # a queue and the total
    for row in rows:
        assert len(row) == len(tables.headings), row


@pytest.mark.django_db
def test_every_status_is_counted_by_the_overview_the_status_command_and_the_metrics(
    admin_client,
):
    """Walks each ``Status`` through the places that show jobs by status: one of them
    listing statuses by hand misses a status (or a new one) here."""
    _one_job_per_status("walk")

    row = next(r for r in _overview(admin_client).rows if r[0][2] == "walk")
    shown = {
        cell[1]["class"].split("djq-count-")[1]: cell[2]
        for cell in row
        if "djq-count-" in (cell[1].get("class") or "")
    }
    assert shown == dict.fromkeys(Status.values, "1")

    report = status_report(timezone.now(), queues=["walk"])
    entry = next(e for e in report["queues"] if e["queue"] == "walk")
    assert entry["counts"] == dict.fromkeys(Status.values, 1)
    counted = next(c for c in stats.job_counts() if c.queue == "walk")
    assert counted.counts == dict.fromkeys(Status.values, 1)

    metrics = pytest.importorskip("django_jobqueue.metrics")
    pytest.importorskip("prometheus_client")
    (jobs, *_) = metrics.QueueCollector().collect()
    walked = {s.labels["status"]: s.value for s in jobs.samples if s.labels["queue"] == "walk"}
    assert walked == dict.fromkeys(Status.values, 1)

    # What each status is elsewhere: a task status, a colour.
    assert set(STATUSES) == set(Status.values)
    assert set(STATUS_COLOURS) == set(Status.values)


# -- the endings of an attempt ----------------------------------------------------------------


def _claimed(name: str) -> ClaimedJob:
    return ClaimedJob(
        id=1,
        job_id=uuid.uuid4().hex,
        name=name,
        queue="endings",
        args=[],
        kwargs={},
        attempts=1,
        max_attempts=3,
        result_ttl=60,
        priority=0,
        group=None,
    )


def test_the_counters_follow_the_ending_whatever_the_log_says(monkeypatch, caplog, settings):
    """Each Ending is counted under its own metric, even with every log phrase reworded: the
    counters are never parsed back from the text."""
    prometheus_client = pytest.importorskip("prometheus_client")
    settings.JOBQUEUE = {**settings.JOBQUEUE, "METRICS": True}
    registry = prometheus_client.REGISTRY
    for ending in Ending:
        monkeypatch.setattr(ending, "phrase", f"reworded {ending.name.lower()} -")
    name = f"lifecycle.{uuid.uuid4().hex}"
    labels = {"queue": "endings", "name": name}

    def sample(metric: str, **more: str) -> float:
        return registry.get_sample_value(metric, {**labels, **more}) or 0.0

    caplog.set_level(logging.INFO, logger="django_jobqueue")
    for ending in Ending:
        outcome = Outcome(_claimed(name), ending is Ending.COMPLETED, 0.01)
        log(outcome, ending, "a detail")
        assert outcome.ending is ending
        assert f"outcome={ending.render('a detail')}" in caplog.text
        assert f"reworded {ending.name.lower()} -" in ending.render("a detail")

    finished = "jobqueue_jobs_finished_total"
    for metric in ("completed", "failed", "cancelled"):
        assert sample(finished, outcome=metric) == 1, metric
    assert sample("jobqueue_job_retries_total") == 1
    assert sample("jobqueue_dead_letters_total") == 1
    # Discarded: another worker owns the job, its run is counted there.
    assert sample("jobqueue_job_duration_seconds_count") == len(Ending) - 1


def test_an_ending_renders_the_log_line_wording():
    assert Ending.COMPLETED.render() == "completed"
    assert Ending.RETRIED.render("retry in 1.2s") == "failed, retry in 1.2s"
    assert Ending.DEAD_LETTERED.render() == "dead-lettered"
    assert Ending.CANCELLED.render() == "cancelled"
    assert Ending.DISCARDED.render("lease lost") == "discarded (lease lost)"


@pytest.mark.django_db(transaction=True)
def test_job_finished_and_the_log_line_carry_the_same_ending(run_worker, settings, caplog):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    caplog.set_level(logging.INFO, logger="django_jobqueue")
    seen: list[tuple[str, Ending]] = []

    def receiver(sender, job_id, ending, **kwargs):
        seen.append((job_id, ending))

    signals.job_finished.connect(receiver)
    try:
        done = add.enqueue(1, 2)
        doomed = always_fails.using(max_attempts=2).enqueue()
        run_worker(wait_for_retries=True)
    finally:
        signals.job_finished.disconnect(receiver)
    assert (done.id, Ending.COMPLETED) in seen
    assert [e for job_id, e in seen if job_id == doomed.id] == [
        Ending.RETRIED,
        Ending.DEAD_LETTERED,
    ]
    lines = [r.getMessage() for r in caplog.records if "outcome=" in r.getMessage()]
    logged = [
        (job_id, line.split("outcome=")[1])
        for job_id in (done.id, doomed.id)
        for line in lines
        if f"job id={job_id} " in line
    ]
    assert [(job_id, e.phrase) for job_id, e in seen] == [
        (job_id, text.split(" error=")[0].split(",")[0]) for job_id, text in logged
    ]


# -- a job's fields: dead letter and requeue ---------------------------------------------------


def _every_field_set(job_id: str) -> NewJob:
    """A job with every field of NewJob off its default, so a field left behind shows."""
    now = timezone.now().replace(microsecond=0)
    values = {
        "job_id": job_id,
        "name": always_fails.name,
        "queue": "fields",
        "args": ["a", 1],
        "kwargs": {"k": [True, None]},
        "priority": 7,
        "group": "user:42",
        "run_after": now - timedelta(minutes=1),
        "max_attempts": 1,
        "result_ttl": 123,
        "notify": True,
        "enqueued_at": now - timedelta(hours=1),
        "time_limit": 1.5,
        "limit_key": "partner",
        "attempt_log": [],
        "trace_context": {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        "ttl_by_outcome": True,
        "metadata": {"tenant": "acme", "n": [1, 2]},
        "context": {"django_jobqueue.context.Locale": "fr"},
    }
    assert set(values) == {field.name for field in dataclasses.fields(NewJob)}
    return NewJob(**values)


@pytest.mark.django_db(transaction=True)
def test_every_field_of_a_job_round_trips_through_a_dead_letter_and_requeue():
    job = _every_field_set("every-field")
    assert Job.objects.insert_new([job]) == {job.job_id}
    now = timezone.now()
    claimed = Job.objects.claim_job(
        job.job_id, worker="test", now=now, lease_until=now + timedelta(seconds=30)
    )
    assert claimed is not None
    assert Job.objects.dead_letter(claimed, "Boom", "trace", now=now) is not None
    letter = DeadLetter.objects.get(job_id=job.job_id)
    for name in DEAD_LETTER_FIELDS:
        if name == "attempt_log":  # a task's log, with the attempt that failed
            assert [entry["traceback"] for entry in letter.attempt_log] == ["trace"]
        else:
            assert getattr(letter, name) == getattr(job, name), name

    before = timezone.now()
    assert deadletters.requeue([letter]) == 1
    again = Job.objects.get(job_id=job.job_id)
    fresh = {"run_after": None, "notify": False, "attempt_log": []}
    for field in dataclasses.fields(NewJob):
        if field.name == "enqueued_at":
            assert again.enqueued_at >= before
        elif field.name in REQUEUE_FRESH_FIELDS:
            assert getattr(again, field.name) == fresh[field.name], field.name
        else:
            assert getattr(again, field.name) == getattr(job, field.name), field.name
    assert (again.status, again.attempts) == (INITIAL_STATUS, 0)


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_a_requeued_job_keeps_its_time_limit_and_its_limit(settings, worker_processes):
    limits = {"LIMITS": {"partner": {"concurrency": 1}}}
    settings.JOBQUEUE = {**settings.JOBQUEUE, **limits}
    handle = naps.using(time_limit=1, limit="partner", max_attempts=1).enqueue("late", 3)
    proc = worker_processes.start("--concurrency", "2", env={"DJQ_JOBQUEUE": json.dumps(limits)})

    def dead_letter() -> DeadLetter | None:
        return DeadLetter.objects.filter(job_id=handle.id).first()

    first = wait_until(dead_letter, timeout=30)
    assert (first.time_limit, first.limit_key) == (1, "partner")
    assert "time_limit of 1s" in first.error
    call_command("jobqueue", "requeue", "--job-id", handle.id)
    requeued = Job.objects.get(job_id=handle.id)
    assert (requeued.time_limit, requeued.limit_key) == (1, "partner")

    second = wait_until(dead_letter, timeout=30)
    assert "time_limit of 1s" in second.error, worker_processes.log(proc)
    ran = Job.objects.get(job_id=handle.id)
    assert ran.status == Status.FAILED
    assert (ran.finished_at - ran.started_at).total_seconds() < 2.5


@pytest.mark.django_db
def test_a_dead_letters_page_shows_every_field_requeue_writes_again(admin_client):
    letter = baker.make_recipe(
        "tests.dead_letter",
        time_limit=1.5,
        limit_key="partner-key",
        trace_context={"traceparent": "00-abc"},
    )
    response = admin_client.get(
        reverse("admin:django_jobqueue_deadletter_change", args=[letter.pk])
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "The job, as requeue writes it again" in page
    for name in DEAD_LETTER_JOB_FIELDS:
        assert f"field-{name}" in page, name
    assert "1.5" in page and "partner-key" in page and "00-abc" in page
