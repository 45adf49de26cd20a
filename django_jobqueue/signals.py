"""Signals sent by django-jobqueue. Receivers run in the sending thread; keep them quick.

* ``job_enqueued(sender=Job, handle)``: a new run was queued (not sent for deduplicated calls).
* ``job_started(sender=Job, job_id, attempt)``: a worker is about to run an attempt.
* ``job_finished(sender=Job, job_id, ok, error)``: an attempt ended (completed or failed).
* ``job_dead_lettered(sender=DeadLetter, dead_letter)``: a job failed for good.
"""

from django.dispatch import Signal

job_enqueued = Signal()
job_started = Signal()
job_finished = Signal()
job_dead_lettered = Signal()
