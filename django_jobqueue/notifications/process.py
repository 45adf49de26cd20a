"""The process runtime: the one owner of the process's notification state.

One :class:`Runtime` per process, :data:`runtime`, holds what waiting and watching share:

* the :class:`~.hub.Hub` (the channel layer's loop thread, the local waiters and their
  groups, the wake-ups, the cancel requests), made at first use for
  ``JOBQUEUE["CHANNEL_LAYER"]``;
* the :class:`~.safetynet.SafetyNet`, the one poller for lost notifications, serving the
  result waiters and the watchers alike;
* the database threads of the async waiters (:func:`db_threads`);
* the watchers of each event loop (``django_jobqueue.live``), made by their owner's factory.

One policy for all of them (the shape of Channels' ``ChannelLayerManager``): each part is
made lazily; after ``fork()`` the child forgets the parent's parts without closing them (their
threads did not come along, and the parent still uses them) and makes its own; a
``setting_changed`` of ``JOBQUEUE`` or ``CHANNEL_LAYERS`` closes the hub (the next use makes
one for the new settings) and retimes the safety net, whose waiters stay registered.

The seam for tests is public: :meth:`Runtime.set` installs a hub and returns the one it
replaces, :meth:`Runtime.reset` closes the hub, :meth:`Runtime.close` also stops the
waiters' database threads.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.dispatch import receiver

from .. import conf
from ..querysets.batches import Released
from ..querysets.dependencies import ANNOUNCERS
from .hub import Hub
from .safetynet import SafetyNet

W = TypeVar("W")

#: Threads the async waiters run their few short queries in, so hundreds of them share a
#: handful of database connections instead of holding one each while they wait.
DB_THREADS = 4
#: The settings whose change closes the hub and retimes the safety net.
SETTINGS = frozenset({"JOBQUEUE", "CHANNEL_LAYERS"})


class Runtime:
    """The process's hub, safety net, async waiters' threads and watchers (module docstring).
    Use :data:`runtime`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._hub: Hub | None = None
        self._net: SafetyNet | None = None
        self._db_threads: ThreadPoolExecutor | None = None
        self._watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _mine(self) -> None:
        """After ``fork()``: forget the parent's parts, never closing them (with the lock)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._hub = self._net = self._db_threads = None
            self._watchers = weakref.WeakKeyDictionary()

    @property
    def hub(self) -> Hub:
        """The hub for the layer named by ``JOBQUEUE["CHANNEL_LAYER"]``."""
        alias = conf.get("CHANNEL_LAYER")
        current = self._hub
        if current is not None and self._pid == os.getpid() and current.alias == alias:
            return current
        with self._lock:
            self._mine()
            if self._hub is None or self._hub.alias != alias:
                if self._hub is not None:
                    self._hub.close()
                self._hub = Hub(alias, explicit=_explicit())
            return self._hub

    @property
    def safety_net(self) -> SafetyNet:
        """The one poller for lost notifications."""
        current = self._net
        if current is not None and self._pid == os.getpid():
            return current
        with self._lock:
            self._mine()
            if self._net is None:
                self._net = SafetyNet(lambda: self.hub)
            return self._net

    def db_threads(self) -> ThreadPoolExecutor:
        """The threads the async waiters run their database calls in."""
        current = self._db_threads
        if current is not None and self._pid == os.getpid():
            return current
        with self._lock:
            self._mine()
            if self._db_threads is None:
                self._db_threads = ThreadPoolExecutor(
                    DB_THREADS, thread_name_prefix="django-jobqueue-db"
                )
            return self._db_threads

    def watchers(self, loop: asyncio.AbstractEventLoop, make: Callable[[Any], W]) -> W:
        """The watchers of ``loop``, made by ``make(loop)`` at first use (one per loop, gone
        with the loop)."""
        with self._lock:
            self._mine()
            found = self._watchers.get(loop)
            if found is None:
                found = self._watchers[loop] = make(loop)
            return found

    # -- the seam ----------------------------------------------------------------------------

    def set(self, hub: Hub | None) -> Hub | None:
        """Install ``hub`` as the process's hub (None: make one at next use) and return the
        one it replaces, not closed. It serves while ``JOBQUEUE["CHANNEL_LAYER"]`` names its
        alias; a settings change closes it like any other."""
        with self._lock:
            self._mine()
            previous, self._hub = self._hub, hub
        if self._net is not None:
            self._net.retime()
        return previous

    def reset(self) -> None:
        """Close the hub (the next use makes a new one) and retime the safety net: tests,
        settings changes. Waiters and watchers stay registered."""
        previous = self.set(None)
        if previous is not None:
            previous.close()

    def close(self) -> None:
        """:meth:`reset`, and stop the async waiters' database threads after closing their
        connections (tests, shutdown)."""
        self.reset()
        with self._lock:
            self._mine()
            executor, self._db_threads = self._db_threads, None
        if executor is None:
            return
        everyone = threading.Barrier(DB_THREADS)

        def close() -> None:
            everyone.wait(timeout=5)  # one call per thread: each closes its own connections
            connections.close_all()

        for future in [executor.submit(close) for _ in range(DB_THREADS)]:
            future.result(timeout=10)
        executor.shutdown(wait=True)


def _explicit() -> bool:
    """True when the project names the channel layer itself (not the embedded default)."""
    user = getattr(settings, "JOBQUEUE", None)
    return isinstance(user, dict) and "CHANNEL_LAYER" in user


#: The process's runtime.
runtime = Runtime()


def hub() -> Hub:
    """The process's hub (``runtime.hub``)."""
    return runtime.hub


def reset_hub() -> None:
    """Close the process's hub; the next :func:`hub` call makes a new one (``runtime.reset``)."""
    runtime.reset()


@receiver(setting_changed)
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``override_settings`` of the layers (or of JOBQUEUE) gets a fresh hub, and the safety
    net's next poll comes after the new interval."""
    if setting in SETTINGS:
        runtime.reset()


def _announce_released(released: Released) -> None:
    """Wake the workers of children a parent's ending queued; tell the waiters of children
    it cancelled (workflows: :mod:`django_jobqueue.querysets.dependencies`), once the ending's
    transaction committed."""
    if released.queues:
        hub().wake_workers(released.queues)
    if released.finished:
        hub().job_finished(released.finished)


ANNOUNCERS.append(_announce_released)
