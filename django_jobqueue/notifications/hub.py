"""The hub: composing the link, the waiters and the wake-ups (the process's one is owned by
the :class:`~.process.Runtime`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from .cancels import Cancels
from .link import Link, kind_of
from .names import finished_message, group_for
from .progress import ProgressSender
from .waiters import Subscription, Waiter, Waiters
from .wakeups import IdleFlag, Wakeups

T = TypeVar("T")

_DESCRIPTIONS = {"off": "off (polling)", "in-memory": "in-memory (this process only)"}


class Hub:
    """The process's link to the channel layer. Use :func:`~.process.hub` to get it."""

    def __init__(self, alias: str | None, *, explicit: bool = True) -> None:
        self.alias = alias
        self._closed = False
        self._link = Link(alias, explicit=explicit)
        self._waiters_of = Waiters(self._link)
        self._wakeups = Wakeups(self._link)
        self._cancels = Cancels(self._link)
        self._progress = ProgressSender(self._link)
        self._link.on_recover = self._waiters_of.retry_leaves

    @property
    def enabled(self) -> bool:
        """True when a channel layer is configured (it may still be degraded)."""
        return self._link.enabled

    @property
    def available(self) -> bool:
        """True when notifications can be relied on right now (configured, not degraded)."""
        return self._link.available

    @property
    def mode(self) -> str:
        """What carries notifications: "redis", "in-memory" (this process only), "other"
        (another channel-layer backend) or "off" (polling)."""
        return kind_of(self._link.layer)

    @property
    def layer(self) -> Any:
        """The hub's own instance of the channel layer (None without one): its connections
        live on the hub's loop, so use it through :meth:`submit`."""
        return self._link.layer

    @property
    def process_channel(self) -> str | None:
        """The channel every local waiter of this process is reached through (None until
        the first join made it)."""
        return self._waiters_of.channel

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def describe(self) -> str:
        """The hub's state in a few words, for a log line: "on (RedisChannelLayer)",
        "in-memory (this process only)", "off (polling)"; ", degraded (polling for now)" is
        added while the layer does not answer."""
        mode = self.mode
        text = _DESCRIPTIONS.get(mode) or f"on ({type(self._link.layer).__name__})"
        if mode != "off" and not self.available:
            text += ", degraded (polling for now)"
        return text

    # -- waiters ---------------------------------------------------------------------------

    def start_subscribe(self, job_id: str, waiter: Waiter) -> Subscription:
        """Register ``waiter`` for ``job_id`` and start joining the job's group, without
        waiting: the caller can write the job meanwhile and confirm the subscription after.
        Later local waiters of the same job share the first one's join."""
        return self._waiters_of.start_subscribe(job_id, waiter)

    def unsubscribe(self, job_id: str, waiter: Waiter) -> None:
        """Forget ``waiter``; the last local waiter of a job leaves the job's group."""
        self._waiters_of.unsubscribe(job_id, waiter)

    def waited_for(self) -> list[str]:
        """The ids of the jobs that have local waiters (result waiters and watched jobs)."""
        return self._waiters_of.waited_for()

    # -- workers and producers -------------------------------------------------------------

    def job_finished(
        self, job_ids: Iterable[str], completed: Mapping[str, tuple[int, Any]] | None = None
    ) -> None:
        """Tell the waiters of ``job_ids`` (in any process) that the jobs finished.
        ``completed``: ``job id -> (attempts, result)`` of jobs that completed with a small
        result (:data:`RESULT_IN_MESSAGE_BYTES` as JSON), carried in the message so that
        their waiters need not read the database."""
        if self._link.loop is not None and self.available:
            self._link.fire(self._send_finished(list(job_ids), dict(completed or {})))

    async def _send_finished(
        self, job_ids: list[str], completed: dict[str, tuple[int, Any]]
    ) -> None:
        # One after the other: the receiving process reads its channel one message at a time
        # anyway, and calls side by side on a busy machine hit NOTIFY_TIMEOUT (measured with
        # the bench's watchers: the hub degraded for 5 s and watchers waited for the resync).
        layer = self._link.layer
        for job_id in job_ids:
            message = finished_message(job_id, completed.get(job_id))
            if not await self._link.call(
                "group_send", partial(layer.group_send, group_for(job_id), message)
            ):
                return

    def job_progress(self, job_ids: Iterable[str]) -> None:
        """Tell the waiters and watchers of ``job_ids`` (in any process) that the jobs' new
        ``progress`` is in the database. Call it after the write has committed; it returns at
        once. Throttled per job: at most one message per job every ``PROGRESS_INTERVAL``
        seconds, and a call within the interval is sent at its end, never dropped."""
        self._progress.job_progress(job_ids)

    def wake_workers(self, queues: Iterable[str]) -> None:
        """Wake one idle worker of each of ``queues`` (coalesced, see :class:`Wakeups`)."""
        self._wakeups.wake_workers(queues)

    def listen_for_work(
        self, queues: Callable[[], Iterable[str]], on_work: Callable[[], None], idle: IdleFlag
    ) -> None:
        """Call ``on_work()`` (from the hub's thread) when a "work available" message for one
        of ``queues()`` arrives; only receive while ``idle`` is set, so busy workers leave
        wake-ups to idle ones."""
        self._wakeups.listen_for_work(queues, on_work, idle)

    def request_cancel(self, worker: str, job_id: str) -> None:
        """Ask ``worker`` to look at once at the cancel flag of its running job ``job_id``
        (best effort: without a layer it sees the flag at its next heartbeat)."""
        self._cancels.request(worker, job_id)

    def listen_for_cancels(self, worker: str, on_cancel: Callable[[str], None]) -> None:
        """Call ``on_cancel(job_id)`` (from the hub's thread) when a "cancel" message for
        ``worker`` arrives; malformed messages are ignored and logged."""
        self._cancels.listen(worker, on_cancel)

    def submit(self, make: Callable[[Any], Awaitable[T]]) -> Future[T] | None:
        """Run ``make(layer)`` on the hub's loop, with the hub's own instance of the channel
        layer (its connections live on that loop), and return its future; None when there is
        no layer. For sending a message by hand: diagnostics, tests."""
        layer = self._link.layer
        if self._link.loop is None:
            return None

        async def run() -> T:
            return await make(layer)

        return self._link.submit(run())

    def close(self) -> None:
        """Stop the hub's loop, leave the groups it is still in and close its connections
        (tests, settings changes)."""
        self._closed = True
        self._link.close(cleanup=partial(self._waiters_of.leave_leftovers, closing=True))
