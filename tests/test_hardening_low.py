"""Issue 22, the low findings and the partial fixes (items 7 to 17): each test failed on the
code before its fix."""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta
from types import SimpleNamespace

import django
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import InvalidJobError, SerializationError, cancel, get_job, signals
from django_jobqueue.models import Job, LimitStart
from django_jobqueue.notifications import hub
from django_jobqueue.notifications.names import finished_message
from django_jobqueue.serialization import check_json
from django_jobqueue.worker.upkeep import Upkeep
from tests.conftest import requires_postgres, wait_until
from tests.testapp.jobs import GATES, Gate, add

pytestmark = pytest.mark.django_db


# -- 14: cancel() inside atomic() notifies waiters after the commit ----------------------------


def test_cancel_inside_atomic_tells_the_waiters_only_after_the_commit(
    monkeypatch, django_capture_on_commit_callbacks
):
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(notify=True)  # someone waits for it
    told: list[list[str]] = []
    monkeypatch.setattr(hub(), "job_finished", lambda ids, completed=None: told.append(list(ids)))
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        assert cancel(handle.id)
        assert told == []  # a waiter told now would read "queued" (or a rolled-back cancel)
    assert told == [[handle.id]]


def test_a_rolled_back_cancel_tells_no_waiter(monkeypatch, django_capture_on_commit_callbacks):
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(notify=True)
    told: list[list[str]] = []
    monkeypatch.setattr(hub(), "job_finished", lambda ids, completed=None: told.append(list(ids)))
    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                assert cancel(handle.id)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
    assert told == []
    assert get_job(handle.id).status == "queued"


# -- 15: status --watch takes a bounded interval ---------------------------------------------


@pytest.mark.parametrize("interval", ["0", "0.01", "1e9"])
def test_status_watch_refuses_an_interval_out_of_bounds(interval, monkeypatch):
    def ctrl_c(seconds: float) -> None:  # an interval accepted by mistake: end the loop
        raise KeyboardInterrupt

    monkeypatch.setattr("django_jobqueue.management.commands.jobqueue.time.sleep", ctrl_c)
    with pytest.raises(CommandError, match=r"from 0\.5 to 86400"):
        call_command("jobqueue", "status", "--watch", interval)


# -- 16: a timeout is bounded at the call site, before anything is written --------------------


@pytest.mark.parametrize("timeout", [1e12, 1.7e308, 366 * 86400 + 1, float("inf")])
def test_a_huge_timeout_is_refused_before_the_job_is_written(timeout):
    with pytest.raises(InvalidJobError, match=r"timeout must be .* up to 31622400"):
        add.using(timeout=timeout).enqueue_and_wait(1, 2)
    with pytest.raises(InvalidJobError, match=r"up to 31622400"):
        add.using(job_id="calc-huge", timeout=timeout).enqueue_and_wait(1, 2)
    assert not Job.objects.exists()
    handle = add.enqueue(1, 2)
    with pytest.raises(InvalidJobError, match=r"up to 31622400"):
        handle.wait(timeout=timeout)


def test_a_year_is_still_a_valid_timeout():
    assert add.using(timeout=366 * 86400).timeout == 366 * 86400


# -- 17: a NUL in the admin's filters, search and object ids finds nothing ---------------------


@pytest.mark.parametrize(
    "path",
    [
        "job/?queue=%00",
        "job/?name=%00",
        "job/?q=%00",
        "job/?queue=a%00b&status=queued",
        "deadletter/?queue=%00",
        "deadletter/?name=%00",
        "deadletter/?q=a%00",
        "workerheartbeat/?host=%00",
        "workerheartbeat/?q=%00",
        "schedule/?q=%00",
    ],
)
def test_a_nul_in_an_admin_filter_or_search_lists_nothing(admin_client, path):
    add.enqueue(1, 2)
    response = admin_client.get(reverse("admin:index") + "django_jobqueue/" + path)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 0


@pytest.mark.parametrize("model", ["job", "deadletter"])
@pytest.mark.parametrize("suffix", ["change/", "delete/", "history/"])
def test_a_nul_in_an_object_id_is_an_object_that_does_not_exist(admin_client, model, suffix):
    add.enqueue(1, 2)
    response = admin_client.get(reverse("admin:index") + f"django_jobqueue/{model}/a%00b/{suffix}")
    assert response.status_code in (302, 404)  # the admin's answer for a missing object


# -- 11: size limits count the bytes of the JSON sent, escapes included ------------------------


@pytest.mark.parametrize(
    "value",
    [
        "é" * 400,  # 400 characters, 800 bytes of UTF-8, 2,402 of JSON
        "\x01" * 300,  # 300 ASCII characters, 1,802 of JSON
        {"😀" * 100: 1},  # a key of 100 characters, 1,202 of JSON
        '"\\' * 300,  # 600 characters, 1,202 of JSON
    ],
)
def test_a_size_limit_counts_the_json_sent_not_the_characters(settings, value):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "MAX_ARGS_BYTES": 1024}
    assert len(json.dumps([value])) > 1024
    with pytest.raises(SerializationError, match="MAX_ARGS_BYTES"):
        add.enqueue(value, 1)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    "value",
    [["é", {"k\n": 'a"b', "😀": ["\\", "\x7f", "plain", "\u2028"]}, "x"], "é" * 400, [[], {}]],
)
def test_the_size_checked_is_that_of_json_dumps(value):
    assert check_json(value) == len(json.dumps(value))


# -- 12: a task's thread that returns after its attempt was recorded leaves nothing behind ----


@pytest.mark.django_db(transaction=True)
def test_a_task_returning_after_its_attempt_ended_leaves_no_entry_behind():
    pytest.importorskip("django.tasks" if django.VERSION >= (6, 0) else "django_tasks")
    from django_jobqueue import backend
    from django_jobqueue.context import current_run
    from django_jobqueue.registry import registry
    from tests.testapp.tasks import gated_task

    GATES["late"] = gate = Gate()
    result = gated_task.enqueue("late")
    run = registry.get(gated_task.module_path).func

    def attempt() -> None:
        current_run.set(SimpleNamespace(job_id=result.id))  # as the worker's thread does
        try:
            run("late")
        finally:
            connections.close_all()

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    try:
        wait_until(lambda: gate.thread is not None)
        # The attempt timed out: the worker recorded it, and sent job_finished.
        signals.job_finished.send(
            sender=Job, job_id=result.id, ok=False, error="timed out", cancelled=False
        )
    finally:
        gate.open()
        GATES.pop("late")
    thread.join(10)
    assert not thread.is_alive()
    assert result.id not in backend._finishing


# -- 13: watching a job writes its row once, not at every WebSocket connect --------------------


def _row_writes(job_id: str) -> int:
    """How many times the job's row was written so far (a fresh tuple per UPDATE on
    PostgreSQL; the connection's count of changed rows on SQLite, for this connection)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT xmin::text FROM {Job._meta.db_table} WHERE job_id = %s", [job_id]
            )
            return int(cursor.fetchone()[0])
    return connection.connection.total_changes


def test_subscribing_a_job_already_waited_for_writes_nothing():
    handle = add.enqueue(1, 2)
    assert Job.objects.subscribe(handle.id) is not None  # the first marks it
    before = _row_writes(handle.id)
    for _ in range(3):
        assert Job.objects.subscribe(handle.id) is None
    assert _row_writes(handle.id) == before
    assert Job.objects.get(job_id=handle.id).notify


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_each_websocket_connect_leaves_the_job_row_alone():
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from django_jobqueue.routing import websocket_urlpatterns

    handle = add.enqueue(1, 2)
    token = handle.watch_token()

    async def connect_and_leave() -> None:
        communicator = WebsocketCommunicator(
            URLRouter(websocket_urlpatterns), f"/ws/jobqueue/jobs/{token}/"
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        assert (await communicator.receive_json_from(timeout=10))["status"] == "queued"
        await communicator.disconnect()

    async_to_sync(connect_and_leave)()
    assert Job.objects.get(job_id=handle.id).notify
    before = _row_writes(handle.id)
    for _ in range(3):
        async_to_sync(connect_and_leave)()
    assert _row_writes(handle.id) == before


# -- 9: rate-limit starts of keys never claimed again are pruned -------------------------------


def test_the_worker_prunes_rate_limit_starts_older_than_any_window():
    now = timezone.now()
    LimitStart.objects.bulk_create(
        [LimitStart(key=f"tenant:{i}", started_at=now - timedelta(hours=2)) for i in range(5)]
        + [LimitStart(key="tenant:live", started_at=now - timedelta(minutes=50))]
    )
    upkeep = Upkeep("default", held=list, lost=print, dead_letter=print)  # type: ignore[arg-type]
    due = upkeep.next_limit_prune
    upkeep.periodic(due - 1)  # not yet: a minute after the worker started
    assert LimitStart.objects.count() == 6
    upkeep.periodic(due)
    assert list(LimitStart.objects.values_list("key", flat=True)) == ["tenant:live"]


# -- 10: what a row holds is escaped on its way to a terminal or a log line --------------------

HOSTILE = "\x1b[2J\x1b[31mpwned\nFAKE LOG LINE\u202e"


def test_dead_letters_print_escapes_instead_of_terminal_controls():
    error = "ValueError: \x1b[2J\x1b[31mpwned\u202e\x07"  # the last line: what the list shows
    baker.make_recipe("tests.dead_letter", job_id="id\x1b[31m", error=error)
    out = io.StringIO()
    call_command("jobqueue", "dead-letters", stdout=out)
    text = out.getvalue()
    assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b[2J\\x1b[31mpwned\\u202e\\x07" in text and "id\\x1b[31m" in text


@pytest.mark.django_db(transaction=True)
def test_the_worker_logs_ids_and_names_from_rows_escaped(run_worker, caplog):
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(job_id=f"row{HOSTILE}")  # raw, not enqueue
    with caplog.at_level("INFO", logger="django_jobqueue"):
        run_worker()
    lines = [record.getMessage() for record in caplog.records if "row" in record.getMessage()]
    assert lines, caplog.text
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
        assert "row\\x1b[2J" in line


# -- 8: a watch token names one run of a job, not every run of its id --------------------------


def _later_run(job_id: str) -> None:
    """Finish the run of ``job_id`` with its outcome expired, and enqueue the id again: a new
    run (a new row) under the same id."""
    Job.objects.filter(job_id=job_id).update(
        status="completed", finished_at=timezone.now(), expires_at=timezone.now()
    )
    assert add.using(job_id=job_id).enqueue(5, 5).created


def test_a_watch_token_does_not_show_a_later_run_of_its_job_id(client):
    first = add.using(job_id="reused-id").enqueue(1, 2)
    token = first.watch_token()
    url = f"/jobqueue/jobs/{token}/"
    assert client.get(url).json()["status"] == "queued"
    _later_run(first.id)
    response = client.get(url)
    assert response.status_code == 404 and response.json() == {"error": "gone"}
    later = get_job(first.id).watch_token()  # the later run's own token shows it
    assert client.get(f"/jobqueue/jobs/{later}/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_socket_with_the_token_of_an_earlier_run_is_closed_gone():
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from django_jobqueue.routing import websocket_urlpatterns

    token = add.using(job_id="reused-ws").enqueue(1, 2).watch_token()
    _later_run("reused-ws")

    async def close_code() -> int:
        communicator = WebsocketCommunicator(
            URLRouter(websocket_urlpatterns), f"/ws/jobqueue/jobs/{token}/"
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        output = await communicator.receive_output(timeout=10)
        assert output["type"] == "websocket.close", output  # nothing of the later run sent
        return output["code"]

    assert async_to_sync(close_code)() == 4404


# -- 7: a result in a "finished" message counts only when signed with SECRET_KEY -------------


def _delivered(message: dict) -> tuple[bool, object]:
    """Pass ``message`` to a waiter of its job, as the process channel does: was it woken,
    and with which final state (None: it reads the database)."""
    from django_jobqueue.notifications import Link, ThreadWaiter, Waiters

    waiters = Waiters(Link(None))
    waiter = ThreadWaiter()
    waiters.start_subscribe(message["job_id"], waiter)
    waiters.handle(message)
    return waiter.event.is_set(), waiter.state


def test_a_signed_small_result_reaches_the_waiter():
    woken, state = _delivered(finished_message("job-7", (1, {"total": 3})))
    assert woken and state.status == "completed" and state.result == {"total": 3}


@pytest.mark.parametrize(
    "forge",
    [
        lambda m: {**m, "result": json.dumps({"total": 1_000_000})},  # altered result
        lambda m: {**m, "attempts": 2},
        lambda m: {**m, "job_id": "another-job"},  # replayed to another job's waiters
        lambda m: {k: v for k, v in m.items() if k != "signature"},  # unsigned
        lambda m: {**m, "signature": "0" * 64},
        lambda m: {**m, "sent": m["sent"] - 3600},  # an hour-old message replayed
    ],
)
def test_a_forged_result_only_makes_the_waiter_read_the_database(forge):
    woken, state = _delivered(forge(finished_message("job-7", (1, {"total": 3}))))
    assert woken and state is None


def test_a_result_signed_with_another_secret_key_is_not_taken(settings):
    message = finished_message("job-7", (1, {"total": 3}))
    settings.SECRET_KEY = "another-project-" + "x" * 50
    assert _delivered(message) == (True, None)
