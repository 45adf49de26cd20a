"""The admin's live socket, ``ws/jobqueue/admin/`` (see :mod:`.routing`): which of the jobs a
staff user's page shows changed.

Authenticated by the admin's session (the route is wrapped in Channels'
``AuthMiddlewareStack``, and in ``AllowedHostsOriginValidator`` so another site's page cannot
open it with the operator's cookie): an active staff user who may view jobs, else the socket is
closed with ``4403`` and nothing is sent.

The page sends ``{"jobs": [job id, ...]}`` (at most :data:`MAX_JOBS`; a new list replaces the
last), and gets ``{"changed": [job id, ...]}`` when their state changed (status, progress,
outcome): it then reads the new cells from the admin's JSON view (:mod:`.admin.live`), so the
database stays the truth and the socket carries no job data. The jobs are watched through
:class:`~django_jobqueue.live.LiveJobs`, the same per-process fan-out as the watch tokens'
consumer: one hub subscription per job whatever the number of pages, "progress" and
"finished" messages, and the safety net's resync (a start, which sends no message, shows
within :data:`~django_jobqueue.notifications.RESYNC` seconds). Changes are sent at most once
per :data:`BATCH_SECONDS`, gathered in one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from functools import partial
from typing import Any

from channels.db import database_sync_to_async

from . import conf
from .consumers import CLOSE_FORBIDDEN, CLOSE_SLOW, ReleasingConsumer
from .live import Message, live_jobs
from .options import JOB_ID_MAX_LENGTH

logger = logging.getLogger("django_jobqueue.console")

#: A message that is not ``{"jobs": [...]}`` (the other close codes: :mod:`.consumers`).
CLOSE_BAD_REQUEST = 4400
#: Job ids one socket may watch: more than a list page shows.
MAX_JOBS = 500
#: Changes are gathered for this long into one message.
BATCH_SECONDS = 0.2


def may_watch(user: Any) -> bool:
    """An active staff user who may view jobs (the admin's own test, and its permission)."""
    return bool(
        user is not None
        and getattr(user, "is_active", False)
        and getattr(user, "is_staff", False)
        and user.has_perm("django_jobqueue.view_job")
    )


def job_ids(text: str | None) -> list[str] | None:
    """The job ids of a ``{"jobs": [...]}`` message; None for anything else."""
    try:
        value = json.loads(text or "")
    except ValueError:
        return None
    jobs = value.get("jobs") if isinstance(value, dict) else None
    if not isinstance(jobs, list) or len(jobs) > MAX_JOBS:
        return None
    if not all(type(job) is str and 0 < len(job) <= JOB_ID_MAX_LENGTH for job in jobs):
        return None
    return list(dict.fromkeys(jobs))


class AdminLiveConsumer(ReleasingConsumer):
    """Tells a staff user's admin page which of its jobs changed."""

    _sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.accept()
        if not await database_sync_to_async(may_watch)(self.scope.get("user")):
            await self._close(CLOSE_FORBIDDEN)
            return
        self._sinks: dict[str, Any] = {}
        self._changed: set[str] = set()
        self._ready = asyncio.Event()
        self._sender = asyncio.get_running_loop().create_task(self._send_changes())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._closed:
            return
        wanted = job_ids(text_data)
        if wanted is None:
            logger.warning(
                'admin live socket: closed (%d): send {"jobs": [job id, ...]}, at most %d ids',
                CLOSE_BAD_REQUEST,
                MAX_JOBS,
            )
            await self._close(CLOSE_BAD_REQUEST)
            return
        live = live_jobs()
        for job_id in set(self._sinks) - set(wanted):
            live.remove(job_id, self._sinks.pop(job_id))
        for job_id in wanted:
            if job_id not in self._sinks:
                sink = self._sinks[job_id] = partial(self._job_changed, job_id)
                live.add(job_id, sink)

    async def _job_changed(self, job_id: str, message: Message | None) -> None:
        """A watched job's new state (or None: it is gone): the page reads it."""
        if not self._closed:
            self._changed.add(job_id)
            self._ready.set()

    async def _send_changes(self) -> None:
        while not self._closed:
            await self._ready.wait()
            await asyncio.sleep(BATCH_SECONDS)  # gather what changes together
            self._ready.clear()
            changed, self._changed = sorted(self._changed), set()
            bound = conf.settings.WATCHER_SEND_TIMEOUT
            try:
                async with asyncio.timeout(bound):
                    await self.send(text_data=json.dumps({"changed": changed}))
            except TimeoutError:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(bound):
                        await self._close(CLOSE_SLOW)
                return

    def _release(self) -> None:
        sinks: dict[str, Any] = getattr(self, "_sinks", {})
        if sinks:
            live = live_jobs()
            for job_id, sink in sinks.items():
                live.remove(job_id, sink)
            sinks.clear()
        sender, self._sender = self._sender, None
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
