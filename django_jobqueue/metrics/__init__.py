"""Prometheus metrics (``pip install "django-jobqueue[metrics]"``, i.e. prometheus-client).

Two kinds, from two places:

* **Counters and a histogram, updated by the worker** where it writes each outcome
  (:mod:`django_jobqueue.telemetry`): ``jobqueue_jobs_finished_total{queue,name,outcome}``
  (``completed``, ``failed``, ``cancelled``), ``jobqueue_job_retries_total{queue,name}``,
  ``jobqueue_dead_letters_total{queue,name}`` and
  ``jobqueue_job_duration_seconds{queue,name}``. They live in the worker process: scrape
  ``runjobworker --metrics-port PORT``, or share a ``PROMETHEUS_MULTIPROC_DIR`` with the
  web processes of the same host and scrape the view.
* **Gauges, read from the database at scrape time** by :class:`QueueCollector` (the view
  :func:`django_jobqueue.metrics.views.metrics_view`): ``jobqueue_jobs{queue,status}``,
  ``jobqueue_oldest_waiting_seconds{queue}``, ``jobqueue_dead_letter_rows{queue}``,
  ``jobqueue_queue_paused{queue}`` (1 for each paused queue, with its ``reason`` and
  ``paused_by`` in ``jobqueue_queue_paused_info``), and ``jobqueue_live_workers`` once
  workers record heartbeats. Four grouped queries per scrape (:mod:`django_jobqueue.stats`)
  and one of the pause table, none of them a full count: queued and running jobs are
  counted exactly through their partial indexes; finished jobs up to
  :data:`FINISHED_COUNT_CAP` (``jobqueue_jobs_capped`` is 1 when the cap was hit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from .. import stats
from ..base import ACTIVE, Status
from ..pauses import paused_queues
from ..routers import queue_databases

try:
    import prometheus_client
except ImportError:  # pragma: no cover - the metrics extra is not installed
    prometheus_client = None  # type: ignore[assignment]

#: Finished jobs counted per scrape, over every queue of a database together (active jobs: no
#: cap).
FINISHED_COUNT_CAP = 10_000

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _prometheus() -> Any:
    if prometheus_client is None:
        raise ImproperlyConfigured(
            "django_jobqueue.metrics needs prometheus-client: "
            'pip install "django-jobqueue[metrics]"'
        )
    return prometheus_client


class QueueCollector:
    """A prometheus-client collector of the queue's state, read from the database ``using``
    each time it is collected (register it on a registry that is scraped, never on one that
    is scraped by every worker, or each would query the database)."""

    def __init__(self, using: str | None = None) -> None:
        #: One database, or None: every queue database (``JOBQUEUE["QUEUES"]``), whose
        #: queues are each on one of them, so their rows add up without overlapping.
        self.using = using

    def _aliases(self) -> list[str]:
        return [self.using] if self.using is not None else queue_databases()

    def describe(self) -> list[Any]:
        return []  # no query at registration time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = timezone.now()
        jobs = GaugeMetricFamily(
            "jobqueue_jobs",
            "Jobs by queue and status: queued and running exactly, finished ones up to a cap "
            "(see jobqueue_jobs_capped).",
            labels=["queue", "status"],
        )
        aliases = self._aliases()
        counted = [
            row
            for alias in aliases
            for row in stats.job_counts(cap=FINISHED_COUNT_CAP, using=alias)
        ]
        capped = False
        for row in counted:
            capped = capped or row.capped
            for status in Status.values:
                if status in ACTIVE or status in row.counts:
                    jobs.add_metric([row.queue, status], row.count(status))
        yield jobs
        yield GaugeMetricFamily(
            "jobqueue_jobs_capped",
            f"1 if more finished jobs exist than were counted ({FINISHED_COUNT_CAP}).",
            value=1 if capped else 0,
        )
        oldest = GaugeMetricFamily(
            "jobqueue_oldest_waiting_seconds",
            "Seconds the oldest ready job of each queue has waited (0: none waits).",
            labels=["queue"],
        )
        waiting = {
            queue: when
            for alias in aliases
            for queue, when in stats.oldest_waiting(now, using=alias).items()
        }
        for queue in sorted({row.queue for row in counted} | set(waiting)):
            oldest.add_metric([queue], stats.waited_seconds(waiting.get(queue), now) or 0.0)
        yield oldest
        letters = GaugeMetricFamily(
            "jobqueue_dead_letter_rows",
            "Dead letters waiting for an operator, by queue.",
            labels=["queue"],
        )
        letter_counts: dict[str, int] = {}
        for alias in aliases:
            for queue, n in stats.dead_letter_counts(using=alias).items():
                letter_counts[queue] = letter_counts.get(queue, 0) + n
        for queue, n in sorted(letter_counts.items()):
            letters.add_metric([queue], n)
        yield letters
        yield from self._paused(counted, waiting)
        counts = [live_workers(alias) for alias in aliases]
        live = None if None in counts else sum(n for n in counts if n is not None)
        if live is not None:
            yield GaugeMetricFamily(
                "jobqueue_live_workers", "Workers with a recent heartbeat.", value=live
            )

    def _paused(self, counted: list[stats.QueueCounts], waiting: dict[str, Any]) -> Iterator[Any]:
        """``jobqueue_queue_paused``: 1 per paused queue, 0 for every other queue seen (so an
        alert can fire on ``== 1``), and the pause's reason and author as an info metric."""
        from prometheus_client.core import GaugeMetricFamily

        pauses = paused_queues(self.using)
        gauge = GaugeMetricFamily(
            "jobqueue_queue_paused",
            "1 if the queue is paused (workers start none of its jobs), else 0.",
            labels=["queue"],
        )
        info = GaugeMetricFamily(
            "jobqueue_queue_paused_info",
            "1 per paused queue, with who paused it, why, and when (a Unix time).",
            labels=["queue", "reason", "paused_by", "paused_at"],
        )
        for queue in sorted({row.queue for row in counted} | set(waiting) | set(pauses)):
            pause = pauses.get(queue)
            gauge.add_metric([queue], 1 if pause is not None else 0)
            if pause is not None:
                at = f"{pause.paused_at.timestamp():.0f}"
                info.add_metric([queue, pause.reason, pause.paused_by, at], 1)
        yield gauge
        yield info


def live_workers(using: str | None = None) -> int | None:
    """How many workers are alive, or None while this version records no heartbeats.

    The seam for worker heartbeats: once :mod:`django_jobqueue.stats` has
    ``live_workers()``, its answer (a number, or a list of workers) is used here, by
    ``manage.py jobqueue status`` and by ``jobqueue health``."""
    function = getattr(stats, "live_workers", None)
    if function is None:
        return None
    found = function(using=using)
    return found if isinstance(found, int) else len(found)


def render(using: str | None = None) -> bytes:
    """The exposition text of one scrape: this process's metrics (or, with
    ``PROMETHEUS_MULTIPROC_DIR`` set, those of every process sharing the directory),
    followed by the queue's gauges read from the database ``using``."""
    prometheus = _prometheus()
    from prometheus_client import CollectorRegistry, generate_latest

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        processes = CollectorRegistry()
        multiprocess.MultiProcessCollector(processes)  # type: ignore[no-untyped-call]
    else:
        processes = prometheus.REGISTRY
    queue = CollectorRegistry(auto_describe=False)
    queue.register(QueueCollector(using))
    return bytes(generate_latest(processes) + generate_latest(queue))


__all__ = ["CONTENT_TYPE", "FINISHED_COUNT_CAP", "QueueCollector", "live_workers", "render"]
