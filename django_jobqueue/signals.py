"""Signals sent by django-jobqueue. Receivers run in the sending thread; keep them quick.

* ``job_enqueued(sender=Job, handle)``: a new run was written (inside the caller's
  transaction, if any; not sent for deduplicated calls).
* ``job_started(sender=Job, job_id, attempt)``: a worker is about to run an attempt.
* ``job_finished(sender=Job, job_id, ok, error, cancelled, ending)``: an attempt ended
  (completed, failed, or ``cancelled``: then ``ok`` is False and ``error`` is "Cancelled");
  ``ending`` is how, a :class:`django_jobqueue.base.Ending` (``COMPLETED``, ``RETRIED``,
  ``DEAD_LETTERED``, ``CANCELLED`` or ``DISCARDED``), the value the worker's log line and
  metrics are rendered from.
* ``job_dead_lettered(sender=DeadLetter, dead_letter)``: a job failed for good.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("django_jobqueue.signals")

job_enqueued = Signal()
job_started = Signal()
job_finished = Signal()
job_dead_lettered = Signal()


def send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal``; a receiver that raises is logged and never breaks the queue."""
    for receiver, response in signal.send_robust(**kwargs):
        if isinstance(response, Exception):
            logger.error(
                "signal receiver %r raised %s: %s",
                receiver,
                type(response).__name__,
                response,
                exc_info=response,
            )
