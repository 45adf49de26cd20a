"""The hub: one per process, composing the link, the waiters and the wake-ups."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from functools import partial
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import conf
from ..querysets.batches import Released
from ..querysets.dependencies import ANNOUNCERS
from .cancels import Cancels
from .link import Link, kind_of
from .names import finished_message, group_for
from .progress import ProgressSender
from .waiters import Subscription, Waiter, Waiters
from .wakeups import IdleFlag, Wakeups

_DESCRIPTIONS = {"off": "off (polling)", "in-memory": "in-memory (this process only)"}


class Hub:
    """The process's link to the channel layer. Use :func:`hub` to get it."""

    def __init__(self, alias: str | None, *, explicit: bool = True) -> None:
        self.alias = alias
        self.pid = os.getpid()
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

    def close(self) -> None:
        """Stop the hub's loop, leave the groups it is still in and close its connections
        (tests, settings changes)."""
        self._link.close(cleanup=partial(self._waiters_of.leave_leftovers, closing=True))

    # -- for the tests: the pieces' state under the names it always had --------------------

    @property
    def _loop(self) -> Any:
        return self._link.loop

    @property
    def _layer(self) -> Any:
        return self._link.layer

    @property
    def _joins(self) -> dict[str, Future[Any]]:
        return self._waiters_of.joins

    @property
    def _waiters(self) -> dict[str, set[Waiter]]:
        return self._waiters_of.waiters


_hub: Hub | None = None
_hub_lock = threading.Lock()


def _explicit() -> bool:
    """True when the project names the channel layer itself (not the embedded default)."""
    user = getattr(settings, "JOBQUEUE", None)
    return isinstance(user, dict) and "CHANNEL_LAYER" in user


def hub() -> Hub:
    """The process's hub for the layer named by ``JOBQUEUE["CHANNEL_LAYER"]``."""
    global _hub
    alias = conf.settings.CHANNEL_LAYER
    current = _hub
    if current is not None and current.pid == os.getpid() and current.alias == alias:
        return current
    with _hub_lock:
        if _hub is None or _hub.pid != os.getpid() or _hub.alias != alias:
            if _hub is not None and _hub.pid == os.getpid():
                _hub.close()
            _hub = Hub(alias, explicit=_explicit())
        return _hub


def reset_hub() -> None:
    """Close the hub; the next :func:`hub` call makes a new one (tests, settings changes)."""
    global _hub
    with _hub_lock:
        if _hub is not None and _hub.pid == os.getpid():
            _hub.close()
        _hub = None


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``override_settings`` of the layers (or of JOBQUEUE) gets a fresh hub."""
    if setting in ("JOBQUEUE", "CHANNEL_LAYERS"):
        reset_hub()


def _announce_released(released: Released) -> None:
    """Wake the workers of children a parent's ending queued; tell the waiters of children
    it cancelled (workflows: :mod:`django_jobqueue.querysets.dependencies`)."""
    if released.queues:
        hub().wake_workers(released.queues)
    if released.finished:
        hub().job_finished(released.finished)


ANNOUNCERS.append(_announce_released)
