"""Live status: the hub's "progress" messages, the WebSocket consumer (through Channels'
``WebsocketCommunicator``), watch tokens and the JSON status view.

The worker's side of progress is simulated the way the worker does it: an UPDATE of the
job's ``progress`` column, then ``hub().job_progress([job_id])``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.core import signing
from django.utils import timezone

from django_jobqueue import get_job
from django_jobqueue import tokens as watch_tokens
from django_jobqueue.consumers import open_watchers
from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.live import live_jobs
from django_jobqueue.models import Job
from django_jobqueue.notifications import Waiter, hub
from django_jobqueue.routing import websocket_urlpatterns
from tests.conftest import wait_until
from tests.testapp.jobs import add

pytestmark = pytest.mark.django_db(transaction=True)

APP = URLRouter(websocket_urlpatterns)
TIMEOUT = 10


@pytest.fixture
def messages_only(settings):
    """Poll so rarely that an update within the test can only come from a message."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 60}


def progress(current: float, total: float | None = 100, message: str = "") -> dict[str, Any]:
    return {
        "current": current,
        "total": total,
        "message": message,
        "updated_at": timezone.now().isoformat(),
    }


def write_progress(job_id: str, value: dict[str, Any], *, notify: bool = True) -> None:
    """What the worker does: write the progress column, then tell the hub."""
    Job.objects.filter(job_id=job_id).update(status="running", progress=value)
    if notify:
        hub().job_progress([job_id])


def expired_token(job_id: str) -> str:
    """A token in the real format whose expiry has passed."""
    return signing.dumps([job_id, int(time.time()) - 1], salt=watch_tokens.SALT, compress=True)


async def watch(token: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(APP, f"/ws/jobqueue/jobs/{token}/")
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    return communicator


async def next_message(communicator: WebsocketCommunicator) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout=TIMEOUT)


async def closed_with(communicator: WebsocketCommunicator) -> int:
    """The close code the server sent next; fails if a text frame came first."""
    output = await communicator.receive_output(timeout=TIMEOUT)
    assert output["type"] == "websocket.close", output
    return output["code"]


# -- tokens --------------------------------------------------------------------------------


def test_watch_token_names_its_job_and_expires():
    handle = add.enqueue(1, 2)
    token = handle.watch_token(max_age=60)
    assert watch_tokens.read(token) == handle.id
    assert handle.id not in token  # signed and compressed; the id is not spelled out
    assert watch_tokens.read(expired_token(handle.id)) is None
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert watch_tokens.read(forged) is None
    assert watch_tokens.read("") is None
    # Signed with another salt (say, the example's status URLs): no watch token.
    assert watch_tokens.read(signing.dumps([handle.id, int(time.time()) + 60])) is None


@pytest.mark.parametrize("max_age", [0, -1, float("inf"), float("nan"), True, "60", 8 * 86400])
def test_watch_token_refuses_a_max_age_that_cannot_work(max_age):
    with pytest.raises(InvalidJobError, match="max_age"):
        add.enqueue(1, 2).watch_token(max_age=max_age)


# -- the consumer --------------------------------------------------------------------------


async def test_first_the_current_state_then_progress_then_the_outcome(messages_only, run_worker):
    handle = await add.aenqueue(1, 2)
    communicator = await watch(await sync_to_async(handle.watch_token)())
    assert await next_message(communicator) == {"status": "queued", "progress": None}
    # The watcher marked the job as waited for: its worker will send "finished".
    assert await sync_to_async(lambda: Job.objects.get(job_id=handle.id).notify)()

    first = progress(40, message="rendering")
    await sync_to_async(write_progress)(handle.id, first)
    assert await next_message(communicator) == {"status": "running", "progress": first}

    await sync_to_async(Job.objects.filter(job_id=handle.id).update)(status="queued")
    await sync_to_async(run_worker)()  # the real worker completes it and sends "finished"
    assert await next_message(communicator) == {
        "status": "completed",
        "progress": first,
        "result": 3,
    }
    assert await closed_with(communicator) == 1000
    await communicator.wait()
    assert open_watchers() == 0


async def test_failed_and_cancelled_jobs_end_with_their_error(run_worker):
    handle = await add.using(max_attempts=1).aenqueue(1, "x")  # 1 + "x" raises
    communicator = await watch(await sync_to_async(handle.watch_token)())
    assert (await next_message(communicator))["status"] == "queued"
    await sync_to_async(run_worker)()
    assert await next_message(communicator) == {
        "status": "failed",
        "progress": None,
        "error": "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
    }
    assert await closed_with(communicator) == 1000

    cancelled = await add.aenqueue(2, 2)
    communicator = await watch(await sync_to_async(cancelled.watch_token)())
    assert (await next_message(communicator))["status"] == "queued"
    assert await cancelled.acancel()
    assert await next_message(communicator) == {
        "status": "cancelled",
        "progress": None,
        "error": "cancelled",
    }
    assert await closed_with(communicator) == 1000


async def test_a_late_watcher_starts_from_the_current_state(messages_only):
    handle = await add.aenqueue(1, 2)
    now = progress(70, message="almost")
    await sync_to_async(write_progress)(handle.id, now)  # nobody watched yet
    communicator = await watch(await sync_to_async(handle.watch_token)())
    assert await next_message(communicator) == {"status": "running", "progress": now}
    await communicator.disconnect()

    finished = await sync_to_async(lambda: add.using(job_id="late-done").enqueue(1, 1))()
    await sync_to_async(_complete)(finished.id, 2)
    communicator = await watch(await sync_to_async(finished.watch_token)())
    assert await next_message(communicator) == {
        "status": "completed",
        "progress": None,
        "result": 2,
    }
    assert await closed_with(communicator) == 1000


def _complete(job_id: str, value: Any) -> None:
    from django_jobqueue.models import JobResult

    job = Job.objects.get(job_id=job_id)
    job.status = "completed"
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "finished_at"])
    JobResult.objects.create(job=job, result=value)


async def test_a_dropped_message_is_made_up_for_by_reading_the_database(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05}
    handle = await add.aenqueue(1, 2)
    communicator = await watch(await sync_to_async(handle.watch_token)())
    assert (await next_message(communicator))["status"] == "queued"
    value = progress(10)
    await sync_to_async(write_progress)(handle.id, value, notify=False)  # no message at all
    assert await next_message(communicator) == {"status": "running", "progress": value}
    await communicator.disconnect()


async def test_many_watchers_of_one_job_share_one_read_per_change(messages_only):
    handle = await add.aenqueue(1, 2)
    # A token each (as 20 pages would have): one token holds MAX_WATCHERS_PER_TOKEN at most.
    tokens = [await sync_to_async(handle.watch_token)(max_age=600 + i) for i in range(20)]
    communicators = [await watch(token) for token in tokens]
    for communicator in communicators:
        assert (await next_message(communicator))["status"] == "queued"
    live = live_jobs()
    assert live.watchers == 20 and live.jobs() == [handle.id]
    for step in (55, 56):
        reads = live.reads  # after the first change, no read of the joins is still due
        value = progress(step)
        await sync_to_async(write_progress)(handle.id, value)
        for communicator in communicators:
            assert await next_message(communicator) == {"status": "running", "progress": value}
    assert live.reads == reads + 1
    for communicator in communicators:
        await communicator.disconnect()
    assert live.watchers == 0 and live.jobs() == []
    assert hub().waited_for() == []  # the job's hub waiter is gone with its last watcher


@pytest.mark.parametrize("token", ["", "nonsense", "bad:token:value", "x" * 5000])
async def test_no_token_or_a_bad_one_is_closed_with_4403_and_nothing_else(token):
    handle = await add.aenqueue(1, 2)
    path = f"/ws/jobqueue/jobs/{token}/" if token else "/ws/jobqueue/jobs/"
    communicator = WebsocketCommunicator(APP, path)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    assert await closed_with(communicator) == 4403
    assert await communicator.receive_nothing()
    assert not await sync_to_async(lambda: Job.objects.get(job_id=handle.id).notify)()
    assert open_watchers() == 0


async def test_an_expired_token_is_closed_with_4403_and_nothing_else():
    handle = await add.aenqueue(1, 2)
    communicator = await watch(expired_token(handle.id))
    assert await closed_with(communicator) == 4403
    assert await communicator.receive_nothing()


async def test_a_job_that_is_gone_is_closed_with_4404():
    token = watch_tokens.make("no-such-job", 60)
    communicator = await watch(token)
    assert await closed_with(communicator) == 4404


async def test_past_max_watchers_sockets_are_closed_with_4503(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "MAX_WATCHERS": 2}
    handle = await add.aenqueue(1, 2)
    token = await sync_to_async(handle.watch_token)()
    first, second = await watch(token), await watch(token)
    for communicator in (first, second):
        assert (await next_message(communicator))["status"] == "queued"
    third = await watch(await sync_to_async(handle.watch_token)(max_age=60))
    assert await closed_with(third) == 4503  # daphne refuses 1013
    assert open_watchers() == 2
    await first.disconnect()
    fourth = await watch(token)  # a slot is free again
    assert (await next_message(fourth))["status"] == "queued"
    await second.disconnect()
    await fourth.disconnect()
    assert open_watchers() == 0


async def test_what_the_client_sends_changes_nothing(messages_only):
    handle = await add.aenqueue(1, 2)
    communicator = await watch(await sync_to_async(handle.watch_token)())
    assert (await next_message(communicator))["status"] == "queued"
    await communicator.send_to(text_data=json.dumps({"status": "completed"}))
    await communicator.send_to(bytes_data=b"\x00\xff")
    value = progress(1)
    await sync_to_async(write_progress)(handle.id, value)
    assert await next_message(communicator) == {"status": "running", "progress": value}
    await communicator.disconnect()


# -- "progress" on the hub -------------------------------------------------------------------


class CountingWaiter(Waiter):
    def __init__(self) -> None:
        self.progressed: list[float] = []
        self.finished = threading.Event()

    def notify(self, state: Any = None) -> None:
        self.finished.set()

    def progress(self) -> None:
        self.progressed.append(time.monotonic())


def test_progress_messages_are_throttled_per_job_and_the_last_one_lands(settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "PROGRESS_INTERVAL": 0.3}
    notifier = hub()
    waiter, other = CountingWaiter(), CountingWaiter()
    assert notifier.start_subscribe("job-a", waiter).confirm()
    assert notifier.start_subscribe("job-b", other).confirm()
    started = time.monotonic()
    for _ in range(5):
        notifier.job_progress(["job-a"])
    notifier.job_progress(["job-b"])  # another job is not held back by job-a's interval
    wait_until(lambda: len(other.progressed) == 1)
    wait_until(lambda: len(waiter.progressed) == 2)
    first, last = waiter.progressed
    assert first - started < 0.3 <= last - started + 0.01  # the trailing one, one interval on
    # Nothing more is due: a "finished" sent now arrives with no third "progress" before it.
    notifier.job_finished(["job-a"])
    assert waiter.finished.wait(TIMEOUT)
    assert len(waiter.progressed) == 2
    notifier.unsubscribe("job-a", waiter)
    notifier.unsubscribe("job-b", other)


def test_result_waiters_ignore_progress_messages(messages_only, run_worker):
    handle = add.enqueue(2, 3)
    write_progress(handle.id, progress(1))
    Job.objects.filter(job_id=handle.id).update(status="queued")
    run_worker()
    assert get_job(handle.id).wait(timeout=5) == 5


# -- the JSON status view ------------------------------------------------------------------


def test_status_view_answers_with_the_consumers_json(client):
    handle = add.enqueue(1, 2)
    url = f"/jobqueue/jobs/{handle.watch_token()}/"
    response = client.get(url)
    assert response.status_code == 200
    assert response.json() == {"status": "queued", "progress": None}
    assert "no-cache" in response["Cache-Control"]
    value = progress(40, message="rendering")
    write_progress(handle.id, value, notify=False)
    assert client.get(url).json() == {"status": "running", "progress": value}
    _complete(handle.id, 3)
    assert client.get(url).json() == {"status": "completed", "progress": value, "result": 3}
    assert client.post(url).status_code == 405


def test_status_view_refuses_bad_and_expired_tokens_alike(client):
    handle = add.enqueue(1, 2)
    for token in ("nonsense", expired_token(handle.id), handle.id):
        response = client.get(f"/jobqueue/jobs/{token}/")
        assert response.status_code == 403
        assert response.json() == {"error": "forbidden"}
    gone = client.get(f"/jobqueue/jobs/{watch_tokens.make('no-such-job', 60)}/")
    assert gone.status_code == 404 and gone.json() == {"error": "gone"}
