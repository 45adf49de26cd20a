"""``runjobworker --processes N``: one supervisor over N worker processes.

The process tree, not the loop: the supervisor runs no job and opens no database
connection. Each worker process is a fresh interpreter started with the supervisor's own
command line (:func:`django.utils.autoreload.get_child_arguments`, as ``runserver
--reload`` restarts itself) and :data:`SLOT_ENV` in its environment, which makes
``runjobworker`` run one :class:`~.loop.Worker` there. A fresh interpreter, not a fork:
nothing of the parent (threads, database connections, a channel layer's sockets) is
inherited half-alive, and the child starts exactly as a worker started by hand does.

- A worker process that exits is replaced: at once after a clean exit (``--max-jobs`` or
  ``--max-memory`` recycled it, someone sent it SIGTERM) or an exit that asks for a fresh
  process (:data:`~.timelimits.EXIT_ABANDONED_THREADS`); after :func:`restart_delay` when
  it keeps dying. Each exit is logged with its status or signal.
- The first SIGTERM or SIGINT is passed on to every worker process as SIGTERM: each drains
  (finishes its running jobs) and exits; then the supervisor exits 0. A second one kills them
  (SIGKILL; their jobs run again after their lease) and the supervisor exits 1.
- With ``--burst``, a worker process that exits 0 found nothing left to do and is not
  replaced; the supervisor exits once every one has.
- Each worker process runs in a session of its own, so a Ctrl-C in the terminal reaches the
  supervisor only (which passes it on once); a worker process whose supervisor is gone
  (killed with SIGKILL) notices within a second, drains and exits (:func:`watch_parent`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.utils import autoreload

from .timelimits import EXIT_ABANDONED_THREADS

logger = logging.getLogger("django_jobqueue.worker.supervisor")

#: Set in a worker process's environment to its slot number (1 to N): ``runjobworker`` then
#: runs one worker, whatever ``--processes`` says, and leaves ``--metrics-port`` to the
#: supervisor.
SLOT_ENV = "DJANGO_JOBQUEUE_WORKER_SLOT"

#: Set in a worker process's environment to the alias of the database it serves, when the
#: supervisor serves queues on several (``JOBQUEUE["QUEUES"]``): one worker process per alias.
DATABASE_ENV = "DJANGO_JOBQUEUE_WORKER_DATABASE"

#: Set in a worker process's environment to its supervisor's pid (see :func:`watch_parent`).
SUPERVISOR_ENV = "DJANGO_JOBQUEUE_SUPERVISOR_PID"

#: A worker process that ran this long before it died counts as healthy: it starts again at
#: once, and its slot's count of failures in a row starts over.
STABLE_SECONDS = 30.0

#: The longest wait before starting again a worker process that keeps dying.
MAX_RESTART_DELAY = 60.0


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting again a worker process that failed ``failures`` times
    in a row: none the first time, then 1, 2, 4, ... up to :data:`MAX_RESTART_DELAY`."""
    if failures <= 1:
        return 0.0
    return min(MAX_RESTART_DELAY, 2.0 ** (failures - 2))


def slot() -> int | None:
    """This process's slot if a supervisor started it, else None."""
    value = os.environ.get(SLOT_ENV)
    return int(value) if value and value.isdigit() else None


def database() -> str | None:
    """The alias this worker process serves if its supervisor chose one, else None."""
    return os.environ.get(DATABASE_ENV) or None


def describe_exit(code: int) -> str:
    """A ``Popen.returncode`` in words: "exited with status 1", "was killed by SIGKILL"."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def watch_parent(stop: Callable[[], None], interval: float = 1.0) -> threading.Thread:
    """In a worker process: call ``stop()`` once its supervisor is gone (the process was
    given another parent), so that an orphan drains and exits instead of running on. The
    supervisor's pid comes from the environment: it may have died before this started."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    parent = int(value) if value.isdigit() else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)  # a parent's death sends no event to poll on portably
        logger.warning(
            "worker pid=%d: its supervisor (pid %d) is gone: draining", os.getpid(), parent
        )
        stop()

    thread = threading.Thread(target=watch, name="djq-watch-parent", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """The ``PROMETHEUS_MULTIPROC_DIR`` of the worker processes: the one already set in the
    environment (shared with other processes: left as it is), or a fresh temporary directory,
    removed on the way out."""
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        yield existing
        return
    path = tempfile.mkdtemp(prefix="djq-metrics-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Slot:
    """One of the N places for a worker process, and the process in it (if any)."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    start_at: float | None = 0.0  # when to start a process here; None: not to
    finished: bool = False  # --burst: its process found nothing left to do


class Supervisor:
    """Keep ``processes`` worker processes running ``argv`` (default: this process's own
    command line) with ``env`` added to their environment; :meth:`run` returns the exit
    status (0 after a drain, 1 after a second signal). With ``databases`` (queues on several
    aliases), ``processes`` worker processes for each alias, told theirs in
    :data:`DATABASE_ENV`."""

    def __init__(
        self,
        processes: int,
        *,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        burst: bool = False,
        databases: Sequence[str] = (),
    ) -> None:
        self.argv = argv if argv is not None else autoreload.get_child_arguments()
        self.env = env or {}
        self.burst = burst
        self.processes = processes
        self.databases = list(databases)
        total = processes * max(1, len(self.databases))
        self.slots = [Slot(number) for number in range(1, total + 1)]
        self.stopping = False
        self.killed = False
        # Signal handlers only put here (SimpleQueue.put is reentrant); the loop does the rest.
        self._events: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}

    def run(self) -> int:
        """Start the worker processes, replace those that exit, until stopped."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        logger.info(
            "supervisor pid=%d starting %d worker processes%s",
            os.getpid(),
            len(self.slots),
            " (--burst)" if self.burst else "",
        )
        try:
            while True:
                self._reap()
                if self._over():
                    break
                self._start_due()
                self._wait()
        finally:
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            for process in self.alive():  # only after an error (none is left otherwise):
                _send(process, signal.SIGTERM)  # they drain, as if we had been stopped
        logger.info("supervisor pid=%d stopped", os.getpid())
        return 1 if self.killed else 0

    def alive(self) -> list[subprocess.Popen[bytes]]:
        """The worker processes running now."""
        return [s.process for s in self.slots if s.process is not None]

    # -- signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._events.put(signum)

    def _wait(self) -> None:
        """Sleep until a signal (a worker process exited, or we are asked to stop) or the
        next start is due; then act on the signals that came."""
        due = [s.start_at for s in self.slots if s.process is None and s.start_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        try:
            signum = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if signum != signal.SIGCHLD:
                self._stop_signal(signal.Signals(signum))
            try:
                signum = self._events.get_nowait()
            except queue.Empty:
                return

    def _stop_signal(self, signum: signal.Signals) -> None:
        if not self.stopping:
            self.stopping = True
            running = self.alive()
            logger.info(
                "supervisor pid=%d got %s: draining %d worker process(es) (each finishes its "
                "running jobs), then exiting",
                os.getpid(),
                signum.name,
                len(running),
            )
            for slot in self.slots:
                slot.start_at = None
            for process in running:
                _send(process, signal.SIGTERM)
            return
        logger.warning(
            "supervisor pid=%d got %s again: killing %d worker process(es) now; their "
            "unfinished jobs run again after their lease",
            os.getpid(),
            signum.name,
            len(self.alive()),
        )
        self.killed = True
        self._kill_all()

    def _kill_all(self) -> None:
        for process in self.alive():
            _send(process, signal.SIGKILL)
        for slot in self.slots:
            if slot.process is not None:
                slot.process.wait()
                self._exited(slot, slot.process.returncode)

    # -- the processes -----------------------------------------------------------------------

    def _over(self) -> bool:
        if self.stopping or self.killed:
            return not self.alive()
        return self.burst and all(slot.finished for slot in self.slots)

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None and slot.start_at is not None and slot.start_at <= now:
                self._start(slot)

    def _start(self, slot: Slot) -> None:
        env = {
            **os.environ,
            **self.env,
            SLOT_ENV: str(slot.number),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        if self.databases:
            env[DATABASE_ENV] = self.databases[(slot.number - 1) // self.processes]
        slot.started = time.monotonic()
        try:
            slot.process = subprocess.Popen(  # noqa: S603 - our own command line
                self.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:  # out of processes or descriptors: try again later
            slot.failures += 1
            slot.start_at = time.monotonic() + max(1.0, restart_delay(slot.failures))
            logger.error("worker process %d could not start: %s; trying again", slot.number, exc)
            return
        slot.start_at = None
        logger.info("worker process %d started: pid=%d", slot.number, slot.process.pid)

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None:
                self._exited(slot, slot.process.returncode)

    def _exited(self, slot: Slot, code: int) -> None:
        """The worker process of ``slot`` exited with ``code``: log it, and plan the next."""
        assert slot.process is not None
        pid, lived = slot.process.pid, time.monotonic() - slot.started
        slot.process = None
        what = f"worker process {slot.number} (pid {pid}) {describe_exit(code)}"
        if self.stopping or self.killed:
            logger.info("%s after %.1f s", what, lived)
            return
        if code == 0 and self.burst:
            slot.finished = True
            logger.info("%s: nothing left to do (--burst)", what)
            return
        if code in (0, EXIT_ABANDONED_THREADS):  # recycled, or asking for a fresh process
            slot.failures = 0
            slot.start_at = time.monotonic()
            logger.info("%s after %.1f s: starting a fresh one", what, lived)
            return
        slot.failures = 1 if lived >= STABLE_SECONDS else slot.failures + 1
        delay = restart_delay(slot.failures)
        slot.start_at = time.monotonic() + delay
        logger.warning(
            "%s after %.1f s (%d failure(s) in a row): starting a new one in %.0f s",
            what,
            lived,
            slot.failures,
            delay,
        )


def _send(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        process.send_signal(signum)
