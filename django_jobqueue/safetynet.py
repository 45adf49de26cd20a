"""The safety-net poll: every job this process waits for, read by one query per interval.

A notification says "look now"; the database is the truth, so a waiter must still see its
job finish when a notification is lost (or when there is no channel layer at all). Instead
of every waiter polling its own job each ``POLL_INTERVAL`` (a thousand waiting requests
would cost a thousand queries a second), one thread per process reads the finished jobs
among all the jobs waited for, ``job_id IN (...)``, :data:`BATCH` ids per query, and hands
each waiter its job's final state:

* every ``POLL_INTERVAL`` while notifications work (a lost message costs at most that);
* every ``POLL_INTERVAL / 4`` while they do not (no layer, the in-memory layer a worker in
  another process cannot reach, a degraded one), so an answer takes about 1.25
  ``POLL_INTERVAL`` (a worker polls for work every ``POLL_INTERVAL``).

The thread sleeps on an event while nobody waits; its one database connection persists
between polls and is closed and opened again after an error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.core.signals import setting_changed
from django.db import connections
from django.dispatch import receiver
from django.utils import timezone

from . import conf
from .base import FINISHED, JobState, Status
from .models import Job
from .notifications import hub

logger = logging.getLogger("django_jobqueue.safetynet")

#: Job ids per query (SQLite builds before 3.32 allow 999 parameters per statement).
BATCH = 900

#: Called from the safety net's thread with the job's final state.
Found = Callable[[JobState], None]


class SafetyNet:
    """The jobs this process waits for and the thread that polls them. Use :func:`safety_net`."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[int, Found]] = {}
        self._changed = threading.Event()
        self._retime = threading.Event()  # settings changed: compute the interval again
        self._thread: threading.Thread | None = None
        self.polls = 0  # queries made, for the tests and the curious
        self._failing = False

    def add(self, job_id: str, found: Found) -> int:
        """Watch ``job_id`` for ``found``; the token to :meth:`discard` it with."""
        token = id(found)
        with self._lock:
            self._waiting.setdefault(job_id, {})[token] = found
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="django-jobqueue-safety-net", daemon=True
                )
                self._thread.start()
        self._changed.set()
        return token

    def discard(self, job_id: str, token: int) -> None:
        """Stop watching ``job_id`` for the caller of :meth:`add` that got ``token``."""
        with self._lock:
            found = self._waiting.get(job_id)
            if found is not None:
                found.pop(token, None)
                if not found:
                    del self._waiting[job_id]

    def waiting(self) -> list[str]:
        with self._lock:
            return list(self._waiting)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self.waiting():
                self._changed.clear()
                if not self.waiting():
                    self._changed.wait()
                continue
            try:
                if self._retime.wait(interval()):
                    self._retime.clear()
                    continue
                self.poll_once()
            except Exception:
                if not self._failing:  # one line per outage, not one a second
                    logger.exception("the safety-net poll failed; trying again every second")
                self._failing = True
                for connection in connections.all(initialized_only=True):
                    connection.close()
                time.sleep(1.0)  # a failure that repeats must not spin
            else:
                if self._failing:
                    logger.warning("the safety-net poll works again")
                self._failing = False

    def poll_once(self) -> None:
        """Read the finished jobs among those waited for and hand each waiter its state."""
        job_ids = self.waiting()
        lost_after = timedelta(seconds=conf.settings.NOTIFY_TIMEOUT)
        notifying = hub().available and hub().mode in ("redis", "other")
        for start in range(0, len(job_ids), BATCH):
            states = finished_states(job_ids[start : start + BATCH])
            self.polls += 1
            now = timezone.now()
            for job_id, (state, finished_at) in states.items():
                if notifying and finished_at is not None and now - finished_at > lost_after:
                    logger.info(
                        "job %s finished %.1fs ago and its waiter was not told: found by the "
                        "safety-net poll (a lost notification)",
                        job_id,
                        (now - finished_at).total_seconds(),
                    )
                with self._lock:
                    found = list(self._waiting.get(job_id, {}).values())
                for callback in found:
                    try:
                        callback(state)
                    except Exception:
                        logger.exception("handing job %s to its waiter failed", job_id)


def interval() -> float:
    """Seconds between two safety-net polls: ``POLL_INTERVAL``, a quarter of it when only
    polling can answer."""
    seconds = conf.settings.POLL_INTERVAL
    notifier = hub()
    if notifier.mode in ("off", "in-memory") or not notifier.available:
        seconds /= 4
    return seconds


def finished_states(job_ids: Sequence[str]) -> dict[str, tuple[JobState, datetime | None]]:
    """The final state (and ``finished_at``) of each of ``job_ids`` that has finished: one
    query."""
    rows = Job.objects.filter(job_id__in=list(job_ids), status__in=FINISHED).values_list(
        "job_id",
        "status",
        "attempts",
        "last_error",
        "outcome__result",
        "outcome__error",
        "finished_at",
    )
    states: dict[str, tuple[JobState, datetime | None]] = {}
    for job_id, status, attempts, last_error, result, error, finished_at in rows:
        if status == Status.FAILED:
            last_error = error or last_error
        states[job_id] = (JobState(status, attempts, result, last_error or ""), finished_at)
    return states


_net: SafetyNet | None = None
_net_lock = threading.Lock()


def safety_net() -> SafetyNet:
    """The process's safety net (a new one after ``fork()``)."""
    global _net
    current = _net
    if current is not None and current.pid == os.getpid():
        return current
    with _net_lock:
        if _net is None or _net.pid != os.getpid():
            _net = SafetyNet()
        return _net


@receiver(setting_changed)
def _retime_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``override_settings`` of JOBQUEUE (or of the layers): the next poll comes after the
    new interval, not after what is left of the old one."""
    if setting in ("JOBQUEUE", "CHANNEL_LAYERS") and _net is not None:
        _net._retime.set()
