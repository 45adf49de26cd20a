"""The WebSocket consumer behind ``ws/jobqueue/jobs/<token>/`` (see :mod:`.routing`).

It sends JSON text frames ``{"status", "progress"}`` (plus ``"result"`` once completed,
``"error"`` once failed or cancelled): the job's current state first, then each change, the
outcome last; then it closes with 1000. Close codes (4000-4999 are the application's own,
which every ASGI server passes on; daphne refuses 1013):

* ``4403``: no token, a forged, malformed or expired one (also when the token expires while
  the socket is open). Nothing else is sent, and the code does not say which of these it
  was. Do not reconnect with the same token.
* ``4404``: a valid token, but the job is gone (its outcome expired and was pruned), or its
  id now names a later run than the one the token was made for.
* ``4408``: the client did not take a state within ``JOBQUEUE["WATCHER_SEND_TIMEOUT"]``
  seconds (it does not read, or reads too slowly for the states it is sent).
* ``4429``: this watch token already holds ``JOBQUEUE["MAX_WATCHERS_PER_TOKEN"]`` sockets of
  this process, or this client address ``MAX_WATCHERS_PER_CLIENT``: the others' room.
* ``4503``: this process already serves ``JOBQUEUE["MAX_WATCHERS"]`` sockets.

``watch.js`` polls the JSON status view at once on 4429 and 4503.

The consumer uses no channel of its own and reads nothing itself: it is one watcher of
:class:`~django_jobqueue.live.LiveJobs`, which reads the database only when a message (or the
polling safety net) says a job changed, through ``database_sync_to_async``; no database
connection is held while a socket is idle. The live task never waits on a socket: each
socket keeps only the latest state it was given (a state replaces the one before, so the
last always lands) and sends it from a task of its own, so a client that does not read only
slows itself, and is closed with 4408 when one send takes longer than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import conf, tokens
from .live import Message, is_final, is_run, live_jobs

logger = logging.getLogger("django_jobqueue")

CLOSE_DONE = 1000
CLOSE_FORBIDDEN = 4403
CLOSE_GONE = 4404
CLOSE_SLOW = 4408
CLOSE_TOO_MANY = 4429
CLOSE_FULL = 4503

_count_lock = threading.Lock()
_open = 0
_by_token: Counter[str] = Counter()
_by_client: Counter[str] = Counter()
#: Nothing to send (a socket's outbox is empty); ``None`` there means "the job is gone".
_EMPTY: Any = object()


def open_watchers() -> int:
    """Sockets this process serves right now (all event loops)."""
    return _open


def _take_slot(token: str, client: str | None) -> int | None:
    """Count a new socket of ``token`` from ``client`` (None: address unknown); the close
    code that refuses it instead when the process, the token or the client is at its cap."""
    global _open
    settings = conf.settings
    with _count_lock:
        if _open >= settings.MAX_WATCHERS:
            return CLOSE_FULL
        if _by_token[token] >= settings.MAX_WATCHERS_PER_TOKEN:
            return CLOSE_TOO_MANY
        if client is not None and _by_client[client] >= settings.MAX_WATCHERS_PER_CLIENT:
            return CLOSE_TOO_MANY
        _open += 1
        _by_token[token] += 1
        if client is not None:
            _by_client[client] += 1
        return None


def _free_slot(token: str, client: str | None) -> None:
    global _open
    with _count_lock:
        _open -= 1
        for counts, key in ((_by_token, token), (_by_client, client)):
            if key is not None:
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


_REFUSED = {
    CLOSE_FULL: "this process serves JOBQUEUE['MAX_WATCHERS'] sockets already",
    CLOSE_TOO_MANY: "its token or its client address holds JOBQUEUE['MAX_WATCHERS_PER_TOKEN'] "
    "or ['MAX_WATCHERS_PER_CLIENT'] sockets already",
}


class ReleasingConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # untyped Channels
    """A socket that lets go of what it holds (:meth:`_release`) exactly once, whether the
    client or the server closes it; it uses no channel of its own."""

    #: No channel per socket: a channel-layer alias that is never configured makes
    #: Channels skip ``new_channel()``; the hub carries this process's messages.
    channel_layer_alias = "django_jobqueue.no-channel-per-socket"

    _closed = False

    async def disconnect(self, code: Any) -> None:
        self._closed = True
        self._release()

    async def _close(self, code: int) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()
        await self.close(code=code)

    def _release(self) -> None:
        raise NotImplementedError


class JobWatchConsumer(ReleasingConsumer):
    """Streams one job's state to a browser; the job is named by a watch token in the URL
    (``handle.watch_token()``). Messages from the client are ignored."""

    job_id: str | None = None
    _slot: tuple[str, str | None] | None = None
    _sender: asyncio.Task[None] | None = None
    _expiry: asyncio.TimerHandle | None = None
    _closing: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        await self.accept()
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        token = kwargs.get("token")
        watch = tokens.read_watch(token)
        if watch is None:
            await self._close(CLOSE_FORBIDDEN)
            return
        if not await database_sync_to_async(is_run)(watch):  # a later run of the id
            await self._close(CLOSE_GONE)
            return
        job_id, expires = watch.job_id, watch.expires
        client = self.scope.get("client")
        address = str(client[0]) if client else None
        refused = _take_slot(token, address)
        if refused is not None:
            logger.warning(
                "live status: refused a watcher of job %s from %s: %s (closed with %d)",
                job_id,
                address or "an unknown address",
                _REFUSED[refused],
                refused,
            )
            await self._close(refused)
            return
        self._slot = (token, address)
        self.job_id = job_id
        self._outbox: Message | None = _EMPTY
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_states(), name="djq-watch-send")
        # The token stops working at its expiry: so does a socket opened with it.
        self._expiry = loop.call_later(max(0.0, expires - time.time()), self._token_expired)
        live_jobs().add(job_id, self.deliver)

    async def deliver(self, message: Message | None) -> None:
        """Take one state to send (the live registry calls it): it replaces a state not sent
        yet; None: the job is gone. Never waits on the socket."""
        if self._closed:
            return
        self._outbox = message
        self._ready.set()

    async def _send_states(self) -> None:
        """This socket's sender: the latest state, each bounded by WATCHER_SEND_TIMEOUT."""
        while not self._closed:
            await self._ready.wait()
            self._ready.clear()
            message, self._outbox = self._outbox, _EMPTY
            if message is _EMPTY:
                continue
            if message is None:
                await self._close(CLOSE_GONE)
                return
            bound = conf.settings.WATCHER_SEND_TIMEOUT
            try:
                async with asyncio.timeout(bound):
                    await self.send(text_data=json.dumps(message, separators=(",", ":")))
                    if is_final(message):
                        await self._close(CLOSE_DONE)  # the close frame waits its turn too
            except TimeoutError:
                logger.warning(
                    "live status: closed a watcher of job %s that took no state for %gs "
                    "(JOBQUEUE['WATCHER_SEND_TIMEOUT']; closed with %d)",
                    self.job_id,
                    bound,
                    CLOSE_SLOW,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(bound):
                        await self._close(CLOSE_SLOW)
                return
            if is_final(message):
                return

    def _token_expired(self) -> None:
        if not self._closed:  # kept: the loop holds only a weak reference to a task
            self._closing = asyncio.get_running_loop().create_task(self._close(CLOSE_FORBIDDEN))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Nothing a client sends changes anything."""

    def _release(self) -> None:
        if self.job_id is not None:
            live_jobs().remove(self.job_id, self.deliver)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        sender, self._sender = self._sender, None
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
        if self._slot is not None:
            slot, self._slot = self._slot, None
            _free_slot(*slot)
