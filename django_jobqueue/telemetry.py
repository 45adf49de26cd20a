"""The hot path's seams for metrics and tracing: counters the worker updates where it writes
an outcome, and OpenTelemetry spans around enqueue and around each run.

Both are optional. Without ``prometheus-client`` (or with ``JOBQUEUE["METRICS"] = False``)
:func:`attempt_ended` returns after one check; without ``opentelemetry-api`` (or with
``JOBQUEUE["TRACING"] = False``) :func:`enqueue_span` opens no span and
:func:`run` calls the job function directly. Nothing here touches the database.

The trace context itself travels as a ``JOBQUEUE["CONTEXT"]`` class
(:class:`django_jobqueue.context.TraceContext`, built on :func:`current_carrier` and
:func:`continuing`): captured inside the enqueue span, restored around the run's span.

The scrape side (queue depth, oldest waiting job, dead letters, computed from the database
at scrape time) and the view are :mod:`django_jobqueue.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from typing import Any

from . import conf
from .base import ClaimedJob, Ending, NewJob

_optional_modules: dict[str, Any] = {}


def _optional(name: str) -> Any:
    """The module ``name`` of an optional extra, imported on first use (not with this module,
    which every worker and web process imports); None when it is not installed."""
    try:
        return _optional_modules[name]
    except KeyError:
        pass
    try:
        module: Any = import_module(name)
    except ImportError:
        module = None
    _optional_modules[name] = module
    return module


#: Buckets of the run time histogram, in seconds: from a no-op job to a long report.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

TRACER_NAME = "django_jobqueue"

logger = logging.getLogger("django_jobqueue.telemetry")


# -- metrics ---------------------------------------------------------------------------------


class _Instruments:
    """The worker-side metrics, made once per process on prometheus-client's default registry
    (so ``runjobworker --metrics-port`` and multiprocess mode see them)."""

    def __init__(self) -> None:
        prometheus_client = _optional("prometheus_client")
        assert prometheus_client is not None
        labels = ("queue", "name")
        self.finished = prometheus_client.Counter(
            "jobqueue_jobs_finished",
            "Jobs that finished, by outcome: completed, failed (dead-lettered) or cancelled.",
            [*labels, "outcome"],
        )
        self.retries = prometheus_client.Counter(
            "jobqueue_job_retries",
            "Attempts that failed and were queued again (including expired leases).",
            labels,
        )
        self.dead_letters = prometheus_client.Counter(
            "jobqueue_dead_letters",
            "Jobs that became dead letters (out of attempts, not retryable, or unknown).",
            labels,
        )
        self.duration = prometheus_client.Histogram(
            "jobqueue_job_duration_seconds",
            "Run time of each attempt that ran, whatever its outcome.",
            labels,
            buckets=DURATION_BUCKETS,
        )


_instruments: _Instruments | None = None


def metrics_enabled() -> bool:
    """True when prometheus-client is installed and ``JOBQUEUE["METRICS"]`` is true."""
    return conf.settings.METRICS and _optional("prometheus_client") is not None


def instruments() -> _Instruments:
    """The process's worker-side metrics (made on first use)."""
    global _instruments
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def attempt_ended(job: ClaimedJob, ending: Ending, duration: float) -> None:
    """Count an attempt that ended as ``ending`` (the value its log line is rendered from,
    never the text), and observe its run time if it ran here."""
    if not metrics_enabled():
        return
    try:
        _count(job, ending, duration)
    except Exception:  # a metrics bug must never stop the worker recording outcomes
        logger.exception("metrics: counting the outcome of job %s failed", job.job_id)


def _count(job: ClaimedJob, ending: Ending, duration: float) -> None:
    if ending.status is None:  # discarded: another worker owns the job now, it counts there
        return
    metrics = instruments()
    if duration > 0:  # 0: it never ran here (an unknown name, an expired lease)
        metrics.duration.labels(job.queue, job.name).observe(duration)
    if ending is Ending.RETRIED:
        metrics.retries.labels(job.queue, job.name).inc()
    if ending.metric is not None:
        metrics.finished.labels(job.queue, job.name, ending.metric).inc()
    if ending is Ending.DEAD_LETTERED:
        metrics.dead_letters.labels(job.queue, job.name).inc()


# -- tracing ---------------------------------------------------------------------------------


def tracing_enabled() -> bool:
    """True when opentelemetry-api is installed and ``JOBQUEUE["TRACING"]`` is true."""
    return conf.settings.TRACING and _optional("opentelemetry.trace") is not None


@contextmanager
def enqueue_span(jobs: Sequence[NewJob]) -> Iterator[None]:
    """A PRODUCER span around writing ``jobs``, current inside the block (so
    :func:`current_carrier` there is its context). Off, no jobs, or no tracer provider set
    yet (the span could not record: opentelemetry-api alone): no span."""
    if not jobs or not tracing_enabled() or not _provider_set():
        yield
        return
    first = jobs[0]
    attributes: dict[str, Any] = {
        "messaging.system": "django_jobqueue",
        "messaging.operation.type": "send",
        "messaging.destination.name": first.queue,
        "django_jobqueue.job.name": first.name,
    }
    if len(jobs) == 1:
        attributes["messaging.message.id"] = first.job_id
    else:
        attributes["messaging.batch.message_count"] = len(jobs)
    with _tracer().start_as_current_span(
        f"enqueue {first.name}", kind=_trace().SpanKind.PRODUCER, attributes=attributes
    ):
        yield


def current_carrier() -> dict[str, str] | None:
    """The current span's context as W3C headers (``traceparent``, and ``tracestate`` if
    any), or None when tracing is off or the current span does not record (nothing to
    continue)."""
    if not tracing_enabled() or not _trace().get_current_span().is_recording():
        return None
    carrier: dict[str, str] = {}
    _optional("opentelemetry.propagate").inject(carrier)
    return carrier or None


@contextmanager
def continuing(carrier: Any) -> Iterator[None]:
    """Make the trace context of ``carrier`` (from :func:`current_carrier`) current inside
    the block, so the run's span is a child of the producer's. Off, or not a dict: nothing."""
    if not tracing_enabled() or not isinstance(carrier, dict) or not carrier:
        yield
        return
    otel_context = _optional("opentelemetry.context")
    token = otel_context.attach(_optional("opentelemetry.propagate").extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


_tracers: list[Any] = []


def _trace() -> Any:
    """``opentelemetry.trace`` (call only where :func:`tracing_enabled` said True)."""
    return _optional("opentelemetry.trace")


def _provider_set() -> bool:
    """False while OpenTelemetry's global tracer provider is its placeholder (no SDK set one
    up): every span would be a no-op then, so enqueue skips making one. Call only where
    :func:`tracing_enabled` said True."""
    trace = _trace()
    placeholders = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    return not isinstance(trace.get_tracer_provider(), placeholders)


def _tracer() -> Any:
    """The package's tracer, made once (a proxy until an SDK's provider is set)."""
    if not _tracers:
        _tracers.append(_trace().get_tracer(TRACER_NAME))
    return _tracers[0]


def _run_span(job: ClaimedJob) -> Any:
    # The producer's span is current (TraceContext.restore); a row written before the trace
    # context moved into ``context`` carries it in its own column (read, never written now).
    propagate = _optional("opentelemetry.propagate")
    parent = propagate.extract(job.trace_context) if job.trace_context else None
    return _tracer().start_as_current_span(
        f"run {job.name}",
        context=parent,
        kind=_trace().SpanKind.CONSUMER,
        attributes={
            "messaging.system": "django_jobqueue",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": job.job_id,
            "django_jobqueue.job.name": job.name,
            "django_jobqueue.job.attempt": job.attempts,
        },
    )


def run(job: ClaimedJob, func: Callable[..., Any], args: Sequence[Any] | None = None) -> Any:
    """Call the job function with the job's arguments (``args``: the positional ones, a
    context first), inside a CONSUMER span that continues the producer's trace (when tracing
    is on); an exception is recorded on the span and raised on."""
    positional = job.args if args is None else args
    if not tracing_enabled():
        return func(*positional, **job.kwargs)
    with _run_span(job):
        return func(*positional, **job.kwargs)


async def arun(
    job: ClaimedJob, func: Callable[..., Awaitable[Any]], args: Sequence[Any] | None = None
) -> Any:
    """Async twin of :func:`run`, for ``async def`` jobs."""
    positional = job.args if args is None else args
    if not tracing_enabled():
        return await func(*positional, **job.kwargs)
    with _run_span(job):
        return await func(*positional, **job.kwargs)
