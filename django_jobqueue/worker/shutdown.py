"""SIGTERM and SIGINT: the first drains the worker, the second exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("django_jobqueue.worker")


class StopSignals:
    """Handlers for SIGTERM and SIGINT while the worker runs (main thread only).

    The first signal calls ``stop()`` (finish the running jobs, then return); the second
    exits the process with status 1: unfinished jobs run again after their lease.
    ``running()`` counts the running jobs, for the log line.
    """

    def __init__(self, name: str, stop: Callable[[], None], running: Callable[[], int]) -> None:
        self.name = name
        self.stop = stop
        self.running = running
        self.count = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self.on_signal)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            logger.info(
                "worker name=%s got %s: finishing %d running job(s), then exiting",
                self.name,
                signal.Signals(signum).name,
                self.running(),
            )
            self.stop()
        else:
            logger.warning(
                "worker name=%s got %s again: exiting now; unfinished jobs run again after "
                "their lease",
                self.name,
                signal.Signals(signum).name,
            )
            os._exit(1)
