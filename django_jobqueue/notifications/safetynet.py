"""The safety-net poll: the process's one poller for lost notifications.

A notification says "look now"; the database is the truth, so a waiter must still see its
job finish, and a watcher see its job change, when a notification is lost (or when there is
no channel layer at all). One thread per process (owned by the
:class:`~.process.Runtime`) does both:

* **waiters**: instead of every waiter polling its own job each ``POLL_INTERVAL`` (a
  thousand waiting requests would cost a thousand queries a second), it reads the finished
  jobs among all the jobs waited for, ``job_id IN (...)``, :data:`BATCH` ids per query, and
  hands each waiter its job's final state: every ``POLL_INTERVAL`` while notifications work
  (a lost message costs at most that), every ``POLL_INTERVAL / 4`` while they do not (no
  layer, the in-memory layer a worker in another process cannot reach, a degraded one), so
  an answer takes about 1.25 ``POLL_INTERVAL`` (a worker polls for work every
  ``POLL_INTERVAL``);
* **watchers** (:mod:`django_jobqueue.live`): it tells each set of watched jobs to read
  them all again every ``POLL_INTERVAL`` when the layer cannot carry messages between
  processes, every :data:`RESYNC` seconds when a Redis layer carries them.

The thread sleeps on an event while nobody waits or watches; its one database connection
persists between polls and is closed and opened again after an error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from django.db import connections
from django.utils import timezone

from .. import conf
from ..base import FINISHED, JobState, Status
from ..models import Job
from ..routers import queue_databases
from .hub import Hub

logger = logging.getLogger("django_jobqueue.safetynet")

#: Job ids per query (SQLite builds before 3.32 allow 999 parameters per statement).
BATCH = 900
#: Seconds between two reads of every watched job when a Redis layer carries the messages
#: (at least POLL_INTERVAL): the safety net for a message that was lost.
RESYNC = 5.0

#: Called from the safety net's thread with the job's final state.
Found = Callable[[JobState], None]
#: Called from the safety net's thread when watched jobs are due for a read of them all.
Resync = Callable[[], None]


class SafetyNet:
    """The jobs this process waits for and watches, and the thread that polls them.

    ``hub()`` gives the process's hub (how notifications fare decides the intervals). Use
    ``runtime.safety_net`` (:mod:`.process`) to get the process's one.
    """

    def __init__(self, hub: Callable[[], Hub]) -> None:
        self._hub = hub
        self._lock = threading.Lock()
        self._waiting: dict[str, dict[int, Found]] = {}
        self._resyncs: dict[int, Resync] = {}
        self._last_resync = 0.0
        self._changed = threading.Event()
        self._retime = threading.Event()  # settings changed: compute the interval again
        self._thread: threading.Thread | None = None
        #: Queries made so far (one per batch of waited-for jobs).
        self.polls = 0
        self._failing = False

    def _start(self) -> None:
        """Start the thread if it is not running (with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="django-jobqueue-safety-net", daemon=True
            )
            self._thread.start()

    def add(self, job_id: str, found: Found) -> int:
        """Watch ``job_id`` for ``found``; the token to :meth:`discard` it with."""
        token = id(found)
        with self._lock:
            self._waiting.setdefault(job_id, {})[token] = found
            self._start()
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
        """The ids of the jobs waited for."""
        with self._lock:
            return list(self._waiting)

    def add_resync(self, resync: Resync) -> int:
        """Call ``resync()`` each time watched jobs are due for a read of them all (see the
        module docstring); the token to :meth:`discard_resync` it with."""
        token = id(resync)
        with self._lock:
            if not self._resyncs:
                self._last_resync = time.monotonic()
            self._resyncs[token] = resync
            self._start()
        self._changed.set()
        return token

    def discard_resync(self, token: int) -> None:
        """Stop calling the ``resync`` that :meth:`add_resync` gave ``token`` for."""
        with self._lock:
            self._resyncs.pop(token, None)

    def retime(self) -> None:
        """Settings changed: the next poll comes after the new interval, not after what is
        left of the old one."""
        self._retime.set()

    def _idle(self) -> bool:
        with self._lock:
            return not self._waiting and not self._resyncs

    def interval(self) -> float:
        """Seconds between two polls: ``POLL_INTERVAL``, a quarter of it when only polling
        can answer."""
        seconds = float(conf.get("POLL_INTERVAL"))
        notifier = self._hub()
        if notifier.mode in ("off", "in-memory") or not notifier.available:
            seconds /= 4
        return seconds

    def resync_interval(self) -> float:
        """Seconds between two reads of every watched job (see the module docstring)."""
        seconds = float(conf.get("POLL_INTERVAL"))
        notifier = self._hub()
        if notifier.mode == "redis" and notifier.available:
            return max(seconds, RESYNC)
        return seconds

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._idle():
                self._changed.clear()
                if self._idle():
                    self._changed.wait()
                continue
            try:
                if self._retime.wait(self.interval()):
                    self._retime.clear()
                    continue
                self.poll_once()
                self._resync_watchers()
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

    def _resync_watchers(self) -> None:
        """Tell every set of watched jobs to read them all, when that is due."""
        now = time.monotonic()
        interval = self.resync_interval()  # read now: a settings change applies at once
        with self._lock:
            if not self._resyncs or now < self._last_resync + interval:
                return
            resyncs = list(self._resyncs.values())
        self._last_resync = now
        for resync in resyncs:
            try:
                resync()
            except Exception:
                logger.exception("asking watched jobs to be read again failed")

    def poll_once(self) -> None:
        """Read the finished jobs among those waited for and hand each waiter its state."""
        job_ids = self.waiting()
        if not job_ids:
            return
        lost_after = timedelta(seconds=conf.get("NOTIFY_TIMEOUT"))
        notifier = self._hub()
        notifying = notifier.available and notifier.mode in ("redis", "other")
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


def finished_states(job_ids: Sequence[str]) -> dict[str, tuple[JobState, datetime | None]]:
    """The final state (and ``finished_at``) of each of ``job_ids`` that has finished: one
    query (one per queue database, ``JOBQUEUE["QUEUES"]``)."""
    rows = [
        row
        for alias in queue_databases()
        for row in Job.objects.using(alias)
        .filter(job_id__in=list(job_ids), status__in=FINISHED)
        .values_list(
            "job_id",
            "status",
            "attempts",
            "last_error",
            "outcome__result",
            "outcome__error",
            "finished_at",
        )
    ]
    states: dict[str, tuple[JobState, datetime | None]] = {}
    for job_id, status, attempts, last_error, result, error, finished_at in rows:
        if status == Status.FAILED:
            last_error = error or last_error
        states[job_id] = (JobState(status, attempts, result, last_error or ""), finished_at)
    return states
