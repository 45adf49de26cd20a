"""Prometheus metrics (the scrape view, the worker's counters) and OpenTelemetry spans."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from django_jobqueue.models import Job
from tests.conftest import ROOT
from tests.testapp.jobs import add, always_fails, other_queue

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The view's exposition, parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before, after, metric, **labels) -> float:
    key = (metric, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_after_a_known_sequence_of_jobs(client, run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "RETRY_BACKOFF": 0}
    before = scrape(client)
    add.enqueue_many([(1, 2), (3, 4), (5, 6)])
    always_fails.using(job_id="doomed", max_attempts=2).enqueue("bad")
    waiting = other_queue.using(job_id="waiting").enqueue(1)
    Job.objects.filter(job_id=waiting.id).update(enqueued_at=timezone.now() - timedelta(minutes=2))
    run_worker(queues=["default"], wait_for_retries=True)
    after = scrape(client)

    # Counters and the histogram, updated by the worker (this process: in-process worker).
    names = {"queue": "default", "name": add.name}
    fails = {"queue": "default", "name": always_fails.name}
    finished = "jobqueue_jobs_finished_total"
    assert delta(before, after, finished, **names, outcome="completed") == 3
    assert delta(before, after, finished, **fails, outcome="failed") == 1
    assert delta(before, after, finished, **fails, outcome="completed") == 0
    assert delta(before, after, "jobqueue_job_retries_total", **fails) == 1
    assert delta(before, after, "jobqueue_dead_letters_total", **fails) == 1
    assert delta(before, after, "jobqueue_job_duration_seconds_count", **names) == 3
    assert delta(before, after, "jobqueue_job_duration_seconds_count", **fails) == 2
    assert delta(before, after, "jobqueue_job_duration_seconds_bucket", **names, le="+Inf") == 3

    # Gauges, read from the database at scrape time.
    def gauge(metric, **labels):
        return after[(metric, tuple(sorted(labels.items())))]

    assert gauge("jobqueue_jobs", queue="default", status="completed") == 3
    assert gauge("jobqueue_jobs", queue="default", status="failed") == 1
    assert gauge("jobqueue_jobs", queue="default", status="queued") == 0
    assert gauge("jobqueue_jobs", queue="other", status="queued") == 1
    assert gauge("jobqueue_jobs", queue="other", status="running") == 0
    assert gauge("jobqueue_jobs_capped") == 0
    assert 120 <= gauge("jobqueue_oldest_waiting_seconds", queue="other") < 180
    assert gauge("jobqueue_oldest_waiting_seconds", queue="default") == 0
    assert gauge("jobqueue_dead_letter_rows", queue="default") == 1


def test_metrics_can_be_turned_off(client, run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "METRICS": False}
    before = scrape(client)
    add.enqueue(1, 1)
    run_worker()
    after = scrape(client)
    labels = {"queue": "default", "name": add.name, "outcome": "completed"}
    assert delta(before, after, "jobqueue_jobs_finished_total", **labels) == 0


def test_the_view_answers_get_only(client):
    assert client.post("/metrics/").status_code == 405


def test_without_the_packages_metrics_and_tracing_are_off_and_jobs_still_run(tmp_path):
    """A process where neither prometheus-client nor opentelemetry can be imported."""
    script = (
        "import sys; sys.modules['prometheus_client'] = None; sys.modules['opentelemetry'] = None\n"
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "from django_jobqueue import telemetry\n"
        "assert not telemetry.metrics_enabled() and not telemetry.tracing_enabled()\n"
        "call_command('migrate', verbosity=0)\n"
        "from tests.testapp.jobs import add\n"
        "from django_jobqueue.worker import Worker\n"
        "handle = add.enqueue(2, 3)\n"
        "Worker(burst=True).run()\n"
        "assert handle.refresh().result == 5, handle.status\n"
        "from django_jobqueue.metrics import render\n"
        "try:\n"
        "    render()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": "",
            "REDIS_URL": "",
            "DJQ_SQLITE_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ImproperlyConfigured" in proc.stdout and "django-jobqueue[metrics]" in proc.stdout


# -- tracing ---------------------------------------------------------------------------------

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")

TRACE = "django_jobqueue.context.TraceContext"


class _Switch:
    """A sampler the tests switch on: the process-wide provider records spans only in the
    tracing tests, and every other test sees non-recording spans."""

    on = False

    def should_sample(self, *args, **kwargs):
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "tests switch"


_SWITCH = _Switch()


@pytest.fixture
def spans():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(sampler=_SWITCH)
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        trace.set_tracer_provider(provider)
    exporter = provider._active_span_processor._span_processors[0].span_exporter
    exporter.clear()
    _SWITCH.on = True
    yield exporter
    _SWITCH.on = False
    exporter.clear()


def test_a_span_pair_carries_the_trace_from_producer_to_worker(spans, run_worker):
    from opentelemetry import trace

    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("request") as request:
        handle = add.using(job_id="traced").enqueue(1, 2)
    row = Job.objects.get(job_id=handle.id)
    assert row.context[TRACE]["traceparent"].startswith("00-")
    assert row.trace_context is None  # the old column is read, never written
    run_worker()
    assert handle.refresh().result == 3
    by_name = {span.name: span for span in spans.get_finished_spans()}
    enqueue, run = by_name[f"enqueue {add.name}"], by_name[f"run {add.name}"]
    trace_id = request.get_span_context().trace_id
    assert enqueue.context.trace_id == run.context.trace_id == trace_id
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert run.parent.span_id == enqueue.context.span_id
    assert enqueue.kind == trace.SpanKind.PRODUCER and run.kind == trace.SpanKind.CONSUMER
    assert run.attributes["messaging.message.id"] == "traced"
    assert run.attributes["django_jobqueue.job.attempt"] == 1
    assert run.status.is_ok


def test_a_failing_run_records_the_error_on_its_span(spans, run_worker):
    always_fails.using(max_attempts=1).enqueue("kaput")
    run_worker()
    (run,) = [s for s in spans.get_finished_spans() if s.name.startswith("run ")]
    assert not run.status.is_ok
    assert run.events[0].name == "exception"
    assert "kaput" in run.events[0].attributes["exception.message"]


def test_enqueue_many_is_one_span_and_tracing_can_be_turned_off(spans, settings, run_worker):
    add.enqueue_many([(1, 1), (2, 2)])
    (enqueue,) = spans.get_finished_spans()
    assert enqueue.attributes["messaging.batch.message_count"] == 2
    contexts = {
        tuple(sorted(c[TRACE].items())) for c in Job.objects.values_list("context", flat=True)
    }
    assert len(contexts) == 1
    spans.clear()
    settings.JOBQUEUE = {**settings.JOBQUEUE, "TRACING": False}
    handle = add.enqueue(3, 3)
    run_worker()
    assert spans.get_finished_spans() == ()
    assert TRACE not in (Job.objects.get(job_id=handle.id).context or {})


def test_a_row_written_before_the_move_still_continues_its_trace(spans, run_worker):
    """A job whose trace context is in the old ``trace_context`` column (written before it
    moved into ``context``) still runs as a child of its producer's span."""
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("old producer") as producer:
        carrier = {}
        from opentelemetry import propagate

        propagate.inject(carrier)
    handle = add.using(job_id="legacy").enqueue(2, 2)
    Job.objects.filter(job_id=handle.id).update(context=None, trace_context=carrier)
    spans.clear()
    run_worker()
    assert handle.refresh().result == 4
    (run,) = spans.get_finished_spans()
    assert run.parent.span_id == producer.get_span_context().span_id


def test_without_the_trace_class_in_context_no_trace_travels(spans, settings, run_worker):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CONTEXT": ["django_jobqueue.context.Locale"]}
    handle = add.enqueue(1, 1)
    assert TRACE not in (Job.objects.get(job_id=handle.id).context or {})
    run_worker()
    run = next(s for s in spans.get_finished_spans() if s.name.startswith("run "))
    assert run.parent is None


@pytest.mark.subprocess
def test_a_worker_serves_its_counters_on_metrics_port(worker_processes):
    """``runjobworker --metrics-port``: a real worker process's counters over HTTP."""
    import socket
    import urllib.request

    from tests.conftest import wait_until

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handle = add.enqueue(2, 2)
    worker_processes.start("--metrics-port", str(port))
    wait_until(lambda: handle.refresh().status == "completed", timeout=30)

    def finished() -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "jobqueue_jobs_finished_total" and sample.labels == {
                    "queue": "default",
                    "name": add.name,
                    "outcome": "completed",
                }:
                    return sample.value
        return None

    assert wait_until(finished, timeout=30) == 1.0
