"""The live admin's JSON view (``admin/django_jobqueue/job/live/``) and its socket
(``ws/jobqueue/admin/``): staff only, bounded, one query for a list page, cells rendered as
the pages render them; the socket says which jobs changed and carries no job data."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_jobqueue import console
from django_jobqueue.admin.live import MAX_ROWS
from django_jobqueue.live import live_jobs
from django_jobqueue.models import Job
from django_jobqueue.routing import websocket_urlpatterns
from tests.testapp.jobs import add

LIVE = reverse("admin:django_jobqueue_job_live")
JOBS = reverse("admin:django_jobqueue_job_changelist")
OVERVIEW = reverse("admin:django_jobqueue_job_overview")


def running(job_id: str, current: int, total: int = 10) -> None:
    """The job's row as a worker writes it when the job reports progress, and the "progress"
    message the worker then sends (without a channel layer: nothing; the pages poll)."""
    from django_jobqueue.notifications import hub

    Job.objects.filter(job_id=job_id).update(
        status="running", progress={"current": current, "total": total, "message": "step"}
    )
    hub().job_progress([job_id])


@pytest.mark.django_db
def test_the_list_shows_progress_bars_and_reads_its_rows_in_one_query(admin_client):
    handles = [add.enqueue(index, 1) for index in range(30)]
    running(handles[0].id, 4)
    page = admin_client.get(JOBS).content.decode()
    assert 'title="4 / 10 step"><progress max="10" value="4"></progress>' in page
    assert 'id="djq-live" hidden data-page="list"' in page
    assert "data-socket" not in page  # served by WSGI: polling
    pks = [str(job.pk) for job in Job.objects.all()]
    with CaptureQueriesContext(connection) as queries:
        answer = admin_client.get(LIVE, {"rows": ",".join(pks)}).json()
    session_and_user = 2
    assert len(queries) == 1 + session_and_user, [query["sql"] for query in queries]
    assert set(answer["rows"]) == set(pks)
    first = answer["rows"][str(Job.objects.get(job_id=handles[0].id).pk)]
    assert first["status"] == "running"
    assert "Running" in first["cells"]["status_display"]
    assert '<progress max="10" value="4">' in first["cells"]["status_display"]
    assert "job_id" not in first["cells"]  # the link never changes
    assert answer["poll"] > 0


@pytest.mark.django_db
def test_a_jobs_page_reads_its_fields(admin_client):
    handle = add.enqueue(1, 2)
    job = Job.objects.get(job_id=handle.id)
    page = admin_client.get(reverse("admin:django_jobqueue_job_change", args=[job.pk])).content
    assert 'data-page="job"' in page.decode()
    assert f'data-job="{job.pk}" data-job-id="{handle.id}"' in page.decode()
    running(handle.id, 7)
    with CaptureQueriesContext(connection) as queries:
        answer = admin_client.get(LIVE, {"job": str(job.pk)}).json()["job"]
    # The session and its user, the job (its large values cut in SQL), its parents: the
    # arguments are not read again by a form (the page's form has no fields either).
    assert len(queries) == 4, [query["sql"] for query in queries]
    assert answer["status"] == "running"
    assert "7 / 10 step" in answer["fields"]["progress_display"]
    assert handle.id in answer["fields"]["job_id"]
    assert admin_client.get(LIVE, {"job": "999999"}).json()["job"] is None  # gone


@pytest.mark.django_db
def test_the_overview_reads_its_rows(admin_client):
    add.enqueue(1, 2)
    page = admin_client.get(OVERVIEW).content.decode()
    assert 'data-page="overview"' in page and 'id="djq-as-of"' in page
    with CaptureQueriesContext(connection) as queries:
        answer = admin_client.get(LIVE, {"overview": "1"}).json()
    # The session and its user, the pauses, three job queries and one of dead letters.
    assert len(queries) == 7, [query["sql"] for query in queries]
    assert any('data-queue="default"' in row for row in answer["rows"])
    assert "djq-total" in answer["rows"][-1]
    assert '<td class="num djq-count-queued"><a' in answer["rows"][-1]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [{}, {"rows": "1,x"}, {"rows": ",".join(["1"] * (MAX_ROWS + 1))}, {"job": "1,2"}],
)
def test_bad_requests_say_what_to_send(admin_client, query):
    response = admin_client.get(LIVE, query)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.django_db
def test_only_staff_who_may_view_jobs_read_it(client):
    add.enqueue(1, 2)
    assert client.get(LIVE, {"overview": "1"}).status_code == 302  # to the admin's login
    User.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    assert client.get(LIVE, {"overview": "1"}).status_code == 302
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.login(username="staff", password="pw")
    assert client.get(LIVE, {"overview": "1"}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_job"))
    assert client.get(LIVE, {"overview": "1"}).status_code == 200


# -- the socket --------------------------------------------------------------------------------


def _application():
    from channels.routing import URLRouter

    return URLRouter(websocket_urlpatterns)


async def _socket(client, origin: bytes = b"http://testserver") -> WebsocketCommunicator:
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(lambda: client.cookies["sessionid"].value)()
    headers = [(b"origin", origin), (b"cookie", f"sessionid={cookie}".encode())]
    return WebsocketCommunicator(_application(), "/ws/jobqueue/admin/", headers=headers)


@pytest.mark.django_db(transaction=True)
async def test_the_socket_says_which_jobs_changed_and_nothing_else(admin_client, settings):
    from asgiref.sync import sync_to_async

    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": 0.05}
    handle = await sync_to_async(add.enqueue)(1, 2)
    other = await sync_to_async(add.enqueue)(2, 3)
    socket = await _socket(admin_client)
    connected, _ = await socket.connect()
    assert connected
    await socket.send_to(text_data=json.dumps({"jobs": [handle.id, other.id]}))
    first = json.loads(await socket.receive_from(timeout=5))  # the current state first
    while len(first["changed"]) < 2:
        first["changed"] += json.loads(await socket.receive_from(timeout=5))["changed"]
    assert sorted(first["changed"]) == sorted([handle.id, other.id])
    await sync_to_async(running)(handle.id, 3)
    assert json.loads(await socket.receive_from(timeout=5)) == {"changed": [handle.id]}
    await socket.send_to(text_data=json.dumps({"jobs": [other.id]}))  # the page changed
    await sync_to_async(running)(handle.id, 4)
    await sync_to_async(running)(other.id, 1)
    assert json.loads(await socket.receive_from(timeout=5)) == {"changed": [other.id]}
    assert live_jobs().jobs() == [other.id]  # the jobs of the page it shows now
    await socket.send_to(text_data="not json")
    assert (await socket.receive_output(timeout=5))["code"] == console.CLOSE_BAD_REQUEST
    await socket.disconnect()
    assert live_jobs().jobs() == []  # closed: nothing is followed for it any more


@pytest.mark.django_db(transaction=True)
async def test_the_socket_is_closed_for_anyone_but_staff(client):
    from asgiref.sync import sync_to_async

    def log_in(username: str, **extra) -> None:
        User.objects.create_user(username, password="pw", **extra)
        client.login(username=username, password="pw")

    await sync_to_async(log_in)("visitor")
    socket = await _socket(client)
    connected, _ = await socket.connect()
    assert connected  # accepted, then closed: the code reaches every browser
    assert (await socket.receive_output(timeout=5))["code"] == console.CLOSE_FORBIDDEN
    await socket.disconnect()
    await sync_to_async(log_in)("staff-without-permission", is_staff=True)
    socket = await _socket(client)
    await socket.connect()
    assert (await socket.receive_output(timeout=5))["code"] == console.CLOSE_FORBIDDEN
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_another_sites_page_cannot_open_the_socket(admin_client):
    socket = await _socket(admin_client, origin=b"https://evil.example")
    connected, _ = await socket.connect()
    assert not connected


@pytest.mark.django_db
def test_a_subclass_s_columns_are_read_as_its_list_renders_them(rf, admin_user):
    from django.contrib import admin

    from django_jobqueue.admin import JobAdmin
    from django_jobqueue.admin.jobs import JOB_LIST_FIELDS
    from django_jobqueue.admin.live import rows

    class WithPriority(JobAdmin):
        list_display = (*JobAdmin.list_display, "priority", "notify")

    handle = add.using(priority=7).enqueue(1, 2)
    job = Job.objects.get(job_id=handle.id)
    request = rf.get("/")
    request.user = admin_user
    answer = rows(WithPriority(Job, admin.site), request, [job.pk], [*JOB_LIST_FIELDS, "notify"])
    cells = answer[str(job.pk)]["cells"]
    assert cells["priority"] == "7"
    assert "icon-no.svg" in cells["notify"]  # a boolean field's icon, as in the list
