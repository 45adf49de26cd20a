"""The process runtime: one owner of the hub, the safety net, the async waiters' threads and
the watchers, with one fork and reset policy and a public seam for tests."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.test import override_settings

from django_jobqueue.live import live_jobs
from django_jobqueue.models import Job
from django_jobqueue.notifications import Hub, SafetyNet, hub, runtime
from tests.conftest import wait_until
from tests.testapp.jobs import add

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def test_the_hub_and_the_safety_net_are_the_runtimes() -> None:
    assert hub() is runtime.hub is runtime.hub
    assert runtime.safety_net is runtime.safety_net
    assert runtime.db_threads() is runtime.db_threads()


def test_set_installs_a_hub_and_hands_back_the_one_it_replaced(settings) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    settings.JOBQUEUE = {**settings.JOBQUEUE, "CHANNEL_LAYER": "default"}
    made = hub()
    mine = Hub("default")
    try:
        assert runtime.set(mine) is made
        assert hub() is mine
        assert not made.closed  # handed back, not closed: the caller's to close
    finally:
        made.close()
    runtime.reset()
    assert mine.closed and hub() is not mine


def test_a_settings_change_closes_the_hub_and_keeps_the_waiters() -> None:
    before = hub()
    net = runtime.safety_net
    token = net.add("still-waited-for", lambda state: None)
    try:
        with override_settings(JOBQUEUE={**django_settings.JOBQUEUE, "CHANNEL_LAYER": None}):
            assert before.closed
            assert hub().mode == "off"
            assert runtime.safety_net is net and "still-waited-for" in net.waiting()
        assert hub().mode == before.mode
    finally:
        net.discard("still-waited-for", token)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_makes_its_own_parts_and_leaves_the_parents_alone() -> None:
    parent = (runtime.hub, runtime.safety_net, runtime.db_threads())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave at once (no clean-up of the parent's parts)
        try:
            child = (runtime.hub, runtime.safety_net, runtime.db_threads())
            report = [mine is not theirs for mine, theirs in zip(child, parent, strict=True)]
            report.append(not parent[0].closed)
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert report == [True, True, True, True]
    assert runtime.hub is parent[0] and not parent[0].closed


def test_the_safety_net_resyncs_what_is_registered_until_discarded(settings) -> None:
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05, "CHANNEL_LAYER": None}
    calls: list[int] = []
    net = runtime.safety_net
    token = net.add_resync(lambda: calls.append(1))
    try:
        wait_until(lambda: len(calls) >= 2)
    finally:
        net.discard_resync(token)
    seen = len(calls)
    later: list[int] = []
    other = net.add_resync(lambda: later.append(1))
    try:
        wait_until(lambda: len(later) >= 2)  # two more resyncs went out meanwhile...
    finally:
        net.discard_resync(other)
    assert len(calls) <= seen + 1  # ...and not to the discarded one (one may have been due)


@pytest.mark.django_db(transaction=True)
async def test_watchers_are_read_again_by_the_one_safety_net(settings, monkeypatch) -> None:
    """Watchers have no timer of their own: a change no message announced reaches them when
    the safety net says so, and only then."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05}
    monkeypatch.setattr(SafetyNet, "resync_interval", lambda self: 3600.0)
    handle = await add.aenqueue(1, 2)
    received: asyncio.Queue[Any] = asyncio.Queue()
    live = live_jobs()
    live.add(handle.id, received.put)
    try:
        assert (await asyncio.wait_for(received.get(), 10))["status"] == "queued"
        update = Job.objects.filter(job_id=handle.id).update
        await sync_to_async(update)(status="running")  # no message at all
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(received.get(), 0.5)
        monkeypatch.setattr(SafetyNet, "resync_interval", lambda self: 0.01)
        assert (await asyncio.wait_for(received.get(), 10))["status"] == "running"
    finally:
        live.remove(handle.id, received.put)
    assert live.jobs() == []
