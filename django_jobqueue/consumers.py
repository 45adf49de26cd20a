"""The WebSocket consumer behind ``ws/jobqueue/jobs/<token>/`` (see :mod:`.routing`).

It sends JSON text frames ``{"status", "progress"}`` (plus ``"result"`` once completed,
``"error"`` once failed or cancelled): the job's current state first, then each change, the
outcome last; then it closes with 1000. Close codes:

* ``4403``: no token, a forged, malformed or expired one. Nothing else is sent, and the code
  does not say which of these it was. Do not reconnect with the same token.
* ``4404``: a valid token, but the job is gone (its outcome expired and was pruned), or its
  id now names a later run than the one the token was made for.
* ``1013`` ("try again later"): this process already serves ``JOBQUEUE["MAX_WATCHERS"]``
  sockets. ``watch.js`` then polls the JSON status view instead.

The consumer uses no channel of its own and reads nothing itself: it is one watcher of
:class:`~django_jobqueue.live.LiveJobs`, which reads the database only when a message (or the
polling safety net) says a job changed, through ``database_sync_to_async``; no database
connection is held while a socket is idle.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import conf, tokens
from .live import Message, is_final, is_run, live_jobs

logger = logging.getLogger("django_jobqueue")

CLOSE_DONE = 1000
CLOSE_TRY_AGAIN = 1013
CLOSE_FORBIDDEN = 4403
CLOSE_GONE = 4404

_count_lock = threading.Lock()
_open = 0


def open_watchers() -> int:
    """Sockets this process serves right now (all event loops)."""
    return _open


def _take_slot() -> bool:
    global _open
    with _count_lock:
        if _open >= int(conf.get("MAX_WATCHERS")):
            return False
        _open += 1
        return True


def _free_slot() -> None:
    global _open
    with _count_lock:
        _open -= 1


class JobWatchConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped Channels
    """Streams one job's state to a browser; the job is named by a watch token in the URL
    (``handle.watch_token()``). Messages from the client are ignored."""

    #: No channel per socket: a channel-layer alias that is never configured makes
    #: Channels skip ``new_channel()``; the hub carries this process's messages.
    channel_layer_alias = "django_jobqueue.no-channel-per-socket"

    job_id: str | None = None
    _slot = False
    _closed = False

    async def connect(self) -> None:
        await self.accept()
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        watch = tokens.read_watch(kwargs.get("token"))
        if watch is None:
            await self._close(CLOSE_FORBIDDEN)
            return
        if not await database_sync_to_async(is_run)(watch):  # a later run of the id
            await self._close(CLOSE_GONE)
            return
        job_id = watch.job_id
        if not _take_slot():
            logger.warning(
                "live status: refused a watcher of job %s: this process serves "
                "JOBQUEUE['MAX_WATCHERS']=%s sockets already (closed with 1013)",
                job_id,
                conf.get("MAX_WATCHERS"),
            )
            await self._close(CLOSE_TRY_AGAIN)
            return
        self._slot = True
        self.job_id = job_id
        live_jobs().add(job_id, self.deliver)

    async def deliver(self, message: Message | None) -> None:
        """Send one state (the live registry calls it); close after the outcome."""
        if self._closed:
            return
        if message is None:
            await self._close(CLOSE_GONE)
            return
        await self.send(text_data=json.dumps(message, separators=(",", ":")))
        if is_final(message):
            await self._close(CLOSE_DONE)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Nothing a client sends changes anything."""

    async def disconnect(self, code: Any) -> None:
        self._release()

    async def _close(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            self._release()
            await self.close(code=code)

    def _release(self) -> None:
        if self.job_id is not None:
            live_jobs().remove(self.job_id, self.deliver)
        if self._slot:
            self._slot = False
            _free_slot()
