"""The Django admin for jobs and dead letters, and a per-queue overview page.

Built for large tables: list pages select only the columns they show (no per-row queries),
never count the whole table (``show_full_result_count = False`` and a count capped at
:data:`~django_jobqueue.admin.display.COUNT_CAP` rows), and the queue and name filters come
from the registered jobs, not from a ``SELECT DISTINCT`` over every row. Detail pages read at
most :data:`~django_jobqueue.admin.display.VALUE_CAP` characters of each large value.

Rows are read-only here; the console's actions (:mod:`.actions`) go through the library's
own functions: jobs can be cancelled, retried now and run again (``change`` permission),
dead letters requeued and run again (``change``), both deleted (``delete``). Each action
works on the page's selection or on every match ("Select all N"), in batches with a count
and a confirmation first (:mod:`.bulk`), and writes the admin's history. The search box is
:mod:`.search`: a job id over the whole table, other text in a bounded window.

* :mod:`.display`: what both admins share (formatting, paginator, filters, columns);
* :mod:`.jobs`: :class:`JobAdmin`; :mod:`.deadletters`: :class:`DeadLetterAdmin`;
* :mod:`.overview`: the queue overview page, over :mod:`django_jobqueue.stats`;
* :mod:`.schedules`: periodic jobs (pause, resume, run now); :mod:`.workers`: live workers;
* :mod:`.batches`: batches of jobs (``with batch(...)``), their counts and callbacks;
* :mod:`.actions`, :mod:`.bulk`, :mod:`.search`: the console's actions, their batches and
  confirmation, the search box;
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
