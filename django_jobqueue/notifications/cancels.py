"""Cancel requests: sent by whoever cancels a running job, received by the worker running it.

Each worker receives on its own plain channel (:func:`~.names.cancel_channel` of its name).
A message only makes the worker renew its leases at once, which reads the jobs'
``cancel_requested`` flags: the database stays the truth, and a forged message costs one
lease renewal, never a cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial

from .link import DEGRADED_RETRY, Link, keep_running
from .names import cancel_channel, cancel_job_id, cancel_message


class Cancels:
    """Sends and receives "cancel" over a :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self._link = link

    def request(self, worker: str, job_id: str) -> None:
        """Tell ``worker`` (best effort, without waiting) that ``job_id`` should stop."""
        if self._link.loop is None or not self._link.available:
            return
        layer = self._link.layer
        send = partial(layer.send, cancel_channel(worker), cancel_message(job_id))
        self._link.fire(self._link.call("send cancel", send))

    def listen(self, worker: str, on_cancel: Callable[[str], None]) -> None:
        """Call ``on_cancel(job_id)`` (from the hub's thread) for each well-formed "cancel"
        message sent to ``worker``."""
        loop = self._link.loop
        if loop is None:
            return
        body = partial(self._listen, cancel_channel(worker), on_cancel)
        loop.call_soon_threadsafe(
            lambda: loop.create_task(
                keep_running("the cancel receive loop", body), name="djq-loop-cancels"
            )
        )

    async def _listen(self, channel: str, on_cancel: Callable[[str], None]) -> None:
        link = self._link
        while True:
            if link.degraded_now():
                await asyncio.sleep(DEGRADED_RETRY)
                continue
            received, message = await link.receive(channel, "cancel", 0.0)
            if not received:
                continue
            link.recovered()
            job_id = cancel_job_id(message)
            if job_id is not None:
                on_cancel(job_id)
            else:
                link.ignore("cancel", message)
