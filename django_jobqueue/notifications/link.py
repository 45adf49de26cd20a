"""The process's link to one channel layer: a loop thread, bounded calls, degrade/recover.

Every layer call is bounded by ``NOTIFY_TIMEOUT``; a failure logs one warning and switches
the link to "degraded" for :data:`DEGRADED_RETRY` seconds (gated calls are skipped, callers
poll the database), after which it tries again. Receive loops run supervised: one that dies
whatever the reason is logged and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from .. import conf
from .log import RateLimitedLog, logger, preview

DEGRADED_RETRY = 5.0
#: Seconds a receive loop pauses after it died, before it is started again.
RESTART_PAUSE = 1.0
#: After this many unreadable messages in a row a receive loop pauses a little between them
#: (a layer that fails at once on every receive must not spin the loop).
BAD_IN_A_ROW = 10
BAD_PAUSE = 0.05
#: Layer calls (group_add, group_send, ...) in flight at once per process. channels_redis
#: opens a Redis connection per concurrent call and keeps it in its pool: a thousand sockets
#: opened at once would otherwise leave a hundred connections open per web process.
CALLS_AT_ONCE = 8
#: The prefix of a process channel's name on ``RedisChannelLayer`` (``new_channel``), so that
#: every sender can give those channels :data:`PROCESS_CHANNEL_CAPACITY`.
PROCESS_CHANNEL_PREFIX = "djq.process"
#: Messages a process channel holds on ``RedisChannelLayer`` before a sender drops more (the
#: layer's default ``capacity`` is 100). One channel carries the "finished" and "progress"
#: messages of every waiter and watcher of a process: a burst of a thousand jobs finishing
#: at once outruns the receive loop (one BZPOPMIN per message) for a moment, and a message
#: over capacity is dropped silently, leaving its waiter to the safety-net poll. Messages
#: still expire after the layer's ``expiry`` (60 s by default), so this bounds the memory a
#: dead process's channel can hold, not the live process's throughput.
PROCESS_CHANNEL_CAPACITY = 100_000


class Link:
    """A channel layer of the process, with the thread and event loop its calls run on."""

    def __init__(
        self,
        alias: str | None,
        *,
        explicit: bool = True,
        on_recover: Callable[[], None] | None = None,
    ) -> None:
        self.alias = alias
        self.on_recover = on_recover
        self.ignored = RateLimitedLog()
        self._bad_in_a_row: dict[str, int] = {}
        self._degraded_until = 0.0
        self._degraded = False
        self._calls: asyncio.Semaphore | None = None  # made on the loop, at the first call
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.layer: Any = make_layer(alias, explicit=explicit) if alias is not None else None
        if self.layer is not None:
            widen_process_channels(self.layer)
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(
                target=run_loop,
                args=(self.loop,),
                name="django-jobqueue-notifications",
                daemon=True,
            )
            self.thread.start()

    @property
    def enabled(self) -> bool:
        """True when a channel layer is configured (it may still be degraded)."""
        return self.layer is not None

    @property
    def available(self) -> bool:
        """True when notifications can be relied on right now (configured, not degraded)."""
        return self.layer is not None and not self.degraded_now()

    def degraded_now(self) -> bool:
        return time.monotonic() < self._degraded_until

    # -- running coroutines on the loop ----------------------------------------------------

    def submit(self, coro: Awaitable[Any]) -> Future[Any] | None:
        if self.loop is None:
            if asyncio.iscoroutine(coro):
                coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def fire(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on the loop without waiting for it; log if it fails."""
        future = self.submit(coro)
        if future is not None:
            future.add_done_callback(_log_failure)

    async def call(
        self, what: str, make: Callable[[], Awaitable[Any]], *, gated: bool = True
    ) -> bool | None:
        """Run one layer call, bounded in time: True if it was answered, False if it failed
        (the link is degraded then), None if it was skipped because the link is degraded
        (``gated``; an ungated call, such as a clean-up, is always tried)."""
        if gated and self.degraded_now():
            return None
        if self._calls is None:
            self._calls = asyncio.Semaphore(CALLS_AT_ONCE)
        try:
            async with self._calls:  # waiting for a turn is not the layer's time
                async with asyncio.timeout(conf.settings.NOTIFY_TIMEOUT):  # no task per call
                    await make()
        except Exception as exc:
            if _is_channel_full(exc):
                logger.debug("notification dropped: %s channel is full", what)
                return True
            self.degrade(what, exc)
            return False
        self.recovered()
        return True

    def degrade(self, what: str, exc: BaseException) -> None:
        self._degraded_until = time.monotonic() + DEGRADED_RETRY
        if not self._degraded:
            self._degraded = True
            logger.warning(
                "notifications degraded: %s on channel layer %r failed (%s: %s); falling back "
                "to polling the database every POLL_INTERVAL, retrying in %gs",
                what,
                self.alias,
                type(exc).__name__,
                exc,
                DEGRADED_RETRY,
            )

    def recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            logger.warning("notifications restored: channel layer %r answers again", self.alias)
            if self.on_recover is not None:
                self.on_recover()

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, channel: str, what: str, pause: float) -> tuple[bool, Any]:
        """Receive one message from ``channel``: ``(True, message)``, or ``(False, None)`` when
        nothing usable came (a read timeout, an unreadable message, an outage: each handled
        here; the caller just receives again)."""
        try:
            message = await self.layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_read_timeout(exc):
                return False, None
            if is_unreadable_message(exc):
                bad = self._bad_in_a_row[channel] = self._bad_in_a_row.get(channel, 0) + 1
                self.ignored.warning(
                    what,
                    "notification ignored: a %s message could not be read (%s: %r)",
                    what,
                    type(exc).__name__,
                    preview(str(exc)),
                )
                await asyncio.sleep(BAD_PAUSE if bad > BAD_IN_A_ROW else 0)
                return False, None
            self.degrade("receive", exc)
            await asyncio.sleep(pause)
            return False, None
        self._bad_in_a_row.pop(channel, None)
        return True, message

    def ignore(self, what: str, message: object) -> None:
        """Log (rate-limited) a message that is not a well-formed ``what`` message."""
        self.ignored.warning(
            what,
            "notification ignored: not a well-formed %s message: %r",
            what,
            preview(message),
        )

    # -- closing ---------------------------------------------------------------------------

    async def close_connections(self) -> None:
        """Close every connection of the layer, blocked receives included: a receive left
        open on the server would take (and lose) the next message sent to its channel."""
        per_loop = getattr(self.layer, "_layers", None)  # channels_redis: pools per loop
        if isinstance(per_loop, dict):
            for layer in list(per_loop.values()):
                sentinels = _sentinel_clients(layer)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(layer.flush(), timeout=1.0)
                for client in sentinels:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.aclose(), timeout=1.0)
            return
        close = getattr(self.layer, "close_pools", None) or getattr(self.layer, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), timeout=1.0)

    def close(self, cleanup: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop the loop and close the layer's connections; ``cleanup()`` runs first, once
        the short tasks (a ``group_discard`` on its way out) had their chance, bounded."""
        if self.loop is None:
            return
        loop = self.loop
        self.loop = None

        async def shutdown() -> None:
            try:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                # Let short tasks finish; stop the loops (tasks named "djq-loop...").
                short = [t for t in tasks if not t.get_name().startswith("djq-loop")]
                if short:
                    await asyncio.wait(short, timeout=1.0)
                if cleanup is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(cleanup(), timeout=1.0)
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                # Bounded: a task that ignores its cancellation must not keep the loop
                # (and its blocked receives) alive; closing the connections ends them.
                await asyncio.wait(tasks, timeout=1.0) if tasks else None
                await self.close_connections()
                # A receive blocked in the server ends once its connection is closed.
                pending = [task for task in tasks if not task.done()]
                await asyncio.wait(pending, timeout=1.0) if pending else None
            finally:
                loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self.thread is not None:
            self.thread.join(timeout=7.0)


async def keep_running(what: str, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body()`` (a receive loop) for good: if it ever ends or raises, log it and start
    it again after :data:`RESTART_PAUSE`, so no message can stop notifications silently."""
    while True:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s stopped unexpectedly; starting it again", what)
        else:
            logger.error("%s ended unexpectedly; starting it again", what)
        await asyncio.sleep(RESTART_PAUSE)


def make_layer(alias: str, *, explicit: bool) -> Any:
    """A private instance of the layer ``alias`` (its connections live on the link's loop
    alone, and closing them cannot disturb the project's own consumers), or None."""
    from channels.layers import channel_layers

    if alias not in (channel_layers.configs or {}):
        if not explicit:  # the embedded default: no channel layer is configured at all
            logger.debug(
                "notifications off: no channel layer %r in CHANNEL_LAYERS; polling the "
                "database every POLL_INTERVAL",
                alias,
            )
        else:
            logger.warning(
                "notifications off: JOBQUEUE['CHANNEL_LAYER'] names %r, which is not in "
                "CHANNEL_LAYERS; workers and waiters poll the database every POLL_INTERVAL",
                alias,
            )
        return None
    try:
        return channel_layers.make_backend(alias)
    except Exception as exc:
        logger.warning(
            "notifications off: channel layer %r could not be made (%s: %s); workers and "
            "waiters poll the database every POLL_INTERVAL",
            alias,
            type(exc).__name__,
            exc,
        )
        return None


def widen_process_channels(layer: Any) -> None:
    """Give process channels (:data:`PROCESS_CHANNEL_PREFIX`) :data:`PROCESS_CHANNEL_CAPACITY`
    on this private instance of a queue-like channels_redis layer: the capacity is enforced
    by whoever sends (a worker's ``group_send``), so every hub widens its own instance."""
    if broadcasts(layer) or kind_of(layer) != "redis":
        return  # (RedisPubSubChannelLayer's attributes need a running loop: not looked at)
    capacities = getattr(layer, "channel_capacity", None)
    if isinstance(capacities, list):
        pattern = re.compile(re.escape(PROCESS_CHANNEL_PREFIX + ".") + ".*")
        layer.channel_capacity = [(pattern, PROCESS_CHANNEL_CAPACITY), *capacities]


async def new_process_channel(layer: Any) -> str:
    """A new process channel of ``layer``: named with :data:`PROCESS_CHANNEL_PREFIX` on a
    queue-like channels_redis layer (whose senders give it more room), as the layer names
    it on any other."""
    if not broadcasts(layer) and kind_of(layer) == "redis":
        channel: str = await layer.new_channel(prefix=PROCESS_CHANNEL_PREFIX)
        return channel
    named: str = await layer.new_channel()
    return named


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def broadcasts(layer: Any) -> bool:
    """True for a layer that gives every receiver of a channel its own copy of a message
    (``channels_redis.pubsub.RedisPubSubChannelLayer``); False for the queue-like layers, where
    one receiver pops each message (``RedisChannelLayer``, ``InMemoryChannelLayer``)."""
    return any(cls.__module__.startswith("channels_redis.pubsub") for cls in type(layer).__mro__)


def kind_of(layer: Any) -> str:
    """ "redis", "in-memory", "other" (another backend) or "off" (no layer)."""
    if layer is None:
        return "off"
    modules = [cls.__module__ for cls in type(layer).__mro__]
    if any(module.startswith("channels_redis") for module in modules):
        return "redis"
    if any(cls.__name__ == "InMemoryChannelLayer" for cls in type(layer).__mro__):
        return "in-memory"
    return "other"


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("notification task failed", exc_info=future.exception())


def is_read_timeout(exc: BaseException) -> bool:
    """A blocking receive that outlived the client's socket timeout: redis-py 8 defaults
    ``socket_timeout`` to 5 s, the length of channels_redis's BZPOPMIN. Not an outage (sends
    are bounded and judged on their own); receive again."""
    return type(exc).__name__ == "TimeoutError" and "reading" in str(exc).lower()


def is_unreadable_message(exc: BaseException) -> bool:
    """An error the layer raised while decoding a message (bytes that are not msgpack, a
    list where channels_redis expects a dict, a token that does not decrypt...): the
    message is consumed and the layer still answers, so this is no outage."""
    classes = type(exc).__mro__
    if isinstance(exc, OSError) or any(cls.__module__.startswith("redis") for cls in classes):
        return False  # the connection, not the message
    return isinstance(
        exc, ValueError | TypeError | LookupError | AttributeError | AssertionError
    ) or any(cls.__name__ in ("InvalidToken", "UnpackException") for cls in classes)


def _is_channel_full(exc: BaseException) -> bool:
    from channels.exceptions import ChannelFull

    return isinstance(exc, ChannelFull)


def _sentinel_clients(loop_layer: Any) -> list[Any]:
    """The clients a Redis Sentinel pool of ``loop_layer`` (channels_redis, one loop's
    connections) keeps to the Sentinels. channels_redis's ``flush()`` closes the pool's
    connections to the primary, not these: each hub that closed would leave their sockets
    to the garbage collector."""
    clients: list[Any] = []
    for connection in list((getattr(loop_layer, "_connections", None) or {}).values()):
        manager = getattr(getattr(connection, "connection_pool", None), "sentinel_manager", None)
        clients.extend(getattr(manager, "sentinels", None) or ())
    return clients
