"""The Django admin for jobs and dead letters, and a per-queue overview page.

Built for large tables: list pages select only the columns they show (no per-row queries),
never count the whole table (``show_full_result_count = False`` and a count capped at
:data:`~django_jobqueue.admin.display.COUNT_CAP` rows), and the queue and name filters come
from the registered jobs, not from a ``SELECT DISTINCT`` over every row. Detail pages read at
most :data:`~django_jobqueue.admin.display.VALUE_CAP` characters of each large value.

Jobs are read-only here. Dead letters can be requeued (``change`` permission) and deleted
(``delete`` permission); requeueing is :func:`django_jobqueue.deadletters.requeue`, one
transaction per click.

* :mod:`.display`: what both admins share (formatting, paginator, filters, columns);
* :mod:`.jobs`: :class:`JobAdmin`; :mod:`.deadletters`: :class:`DeadLetterAdmin`;
* :mod:`.overview`: the queue overview page, over :mod:`django_jobqueue.stats`;
* :mod:`.schedules`: periodic jobs (pause, resume, run now); :mod:`.workers`: live workers;
* :mod:`.batches`: batches of jobs (``with batch(...)``), their counts and callbacks.
* :mod:`.live`: what the live list, job page and overview read (``console.js``).
"""

from __future__ import annotations

from .batches import JobBatchAdmin
from .deadletters import DeadLetterAdmin
from .display import COUNT_CAP, VALUE_CAP, CappedCountPaginator, human_seconds
from .jobs import JobAdmin
from .overview import CHART_MINUTES, build_overview
from .schedules import ScheduleAdmin
from .workers import WorkerHeartbeatAdmin

__all__ = [
    "CHART_MINUTES",
    "COUNT_CAP",
    "VALUE_CAP",
    "CappedCountPaginator",
    "DeadLetterAdmin",
    "JobAdmin",
    "JobBatchAdmin",
    "ScheduleAdmin",
    "WorkerHeartbeatAdmin",
    "build_overview",
    "human_seconds",
]
