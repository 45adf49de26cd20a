"""Sending "progress": a worker wrote a job's new ``progress`` value; tell its watchers.

Throttled per job on the sending process: at most one message per job every
``PROGRESS_INTERVAL`` seconds (0.5 s by default, the same interval the worker writes progress
at); a call within the interval is not dropped but merged into one message sent when the
interval is over, so the last value always reaches the watchers. The message only says "look
now": watchers read the value from the database, which stays the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from .. import conf
from .link import Link
from .names import group_for, progress_message

#: Above this many remembered jobs, the ones whose interval is over are forgotten.
REMEMBER = 1024


class ProgressSender:
    """The "progress" messages of one process, over a :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self._link = link
        # On the link's loop only:
        self._last: dict[str, float] = {}  # job id -> when its last message went out
        self._pending: set[str] = set()  # jobs with a message due at the end of the interval
        self._tasks: set[asyncio.Future[Any]] = set()

    def job_progress(self, job_ids: Iterable[str]) -> None:
        """Send "progress" to the groups of ``job_ids`` (any thread; returns at once)."""
        loop = self._link.loop
        if loop is None or not self._link.available:
            return
        ids = list(job_ids)
        if ids:
            loop.call_soon_threadsafe(self._due, ids)

    def _due(self, job_ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        interval = conf.settings.PROGRESS_INTERVAL
        now = time.monotonic()
        send: list[str] = []
        for job_id in job_ids:
            if job_id in self._pending:
                continue  # a message is due already; it will say "look now" for this one too
            wait = self._last.get(job_id, -interval) + interval - now
            if wait <= 0:
                self._last[job_id] = now
                send.append(job_id)
            else:
                self._pending.add(job_id)
                loop.call_later(wait, self._trailing, job_id)
        if len(self._last) > REMEMBER:
            for job_id, sent in list(self._last.items()):
                if sent + interval <= now and job_id not in self._pending:
                    del self._last[job_id]
        if send:
            self._start(send)

    def _trailing(self, job_id: str) -> None:
        self._pending.discard(job_id)
        self._last[job_id] = time.monotonic()
        self._start([job_id])

    def _start(self, job_ids: list[str]) -> None:
        task = asyncio.ensure_future(self._send(job_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, job_ids: list[str]) -> None:
        layer = self._link.layer
        for job_id in job_ids:
            send = partial(layer.group_send, group_for(job_id), progress_message(job_id))
            if not await self._link.call("group_send", send):
                return
