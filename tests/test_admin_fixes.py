"""What a new user hit in the admin: dead-letter errors cut off, internal ids in URLs, no way
to the overview from the index, a ttl without a unit, a History button on read-only rows, and
huge values loaded and rendered whole."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from django_jobqueue.admin.display import (
    ERROR_HEAD,
    NAME_CHARS,
    VALUE_CAP,
    error_summary,
    seconds_in_words,
    short_column,
)
from django_jobqueue.models import DeadLetter, Job, JobResult
from tests.testapp.jobs import add, always_fails

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:django_jobqueue_job_changelist")
LETTERS = reverse("admin:django_jobqueue_deadletter_changelist")
OVERVIEW = reverse("admin:django_jobqueue_job_overview")
APP_INDEX = reverse("admin:app_list", args=["django_jobqueue"])


def letter(**fields) -> DeadLetter:
    values = {
        "name": always_fails.name,
        "queue": "default",
        "args": [],
        "kwargs": {},
        "attempts": 3,
        "max_attempts": 3,
        "result_ttl": 3600,
        "error": "RuntimeError: boom",
        "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: boom",
        "enqueued_at": timezone.now(),
        **fields,
    }
    return baker.make(DeadLetter, **values)


def job(**fields) -> Job:
    pk = Job.objects.get(job_id=add.enqueue(1, 2).id).pk
    Job.objects.filter(pk=pk).update(**fields)
    return Job.objects.get(pk=pk)


def change_url(obj: Job | DeadLetter, object_id: str | None = None) -> str:
    model = obj._meta.model_name
    return reverse(f"admin:django_jobqueue_{model}_change", args=[object_id or obj.pk])


# -- the dead-letter list: a one-line summary from the start of each error, in SQL ------------


def test_error_summary_is_the_type_and_message():
    assert error_summary("ValueError: bad input") == "ValueError: bad input"
    assert error_summary("ValueError: first\nsecond\nlast") == "ValueError: first … last"
    cut = "KeyError: " + "x" * ERROR_HEAD
    assert error_summary(cut[:ERROR_HEAD]) == cut[:ERROR_HEAD].strip() + " …"
    assert error_summary("") == ""


def test_dead_letter_list_reads_only_the_start_of_each_error(admin_client):
    huge = "ConnectionError: the partner API answered 503 " + "x" * 2_000_000
    for _ in range(5):
        letter(error=huge, traceback="Traceback...\n" * 100_000)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(LETTERS)
    html = response.content.decode()
    assert len(html) < 100_000, "five 2 MB errors make a small page"
    rows = [q["sql"] for q in queries if "django_jobqueue_deadletter" in q["sql"]]
    listing = [sql for sql in rows if "SUBSTR" in sql.upper()]
    assert listing, "the error is cut in SQL"
    for sql in rows:
        whole = re.sub(r'SUBSTR(ING)?\("django_jobqueue_deadletter"\."error"', "", sql)
        assert '"django_jobqueue_deadletter"."error"' not in whole, sql
        assert '"traceback"' not in sql
    counts = [sql for sql in rows if "COUNT(" in sql.upper()]
    assert counts and not [sql for sql in counts if "SUBSTR" in sql.upper()], "count: ids only"
    assert html.count("ConnectionError: the partner API answered 503") == 10, "text and title"
    assert 'title="ConnectionError: the partner API answered 503 xxx' in html


def test_a_short_error_is_shown_whole_without_a_title(admin_client):
    letter(error="KeyError: 'user_id'")
    html = admin_client.get(LETTERS).content.decode()
    assert '<td class="field-error_line">KeyError: &#x27;user_id&#x27;</td>' in html


# -- URLs take the public job id -------------------------------------------------------------


def test_a_job_page_by_its_public_job_id(admin_client):
    target = job()
    job()  # another one
    for object_id in [target.job_id, str(target.pk)]:
        response = admin_client.get(change_url(target, object_id))
        assert response.status_code == 200, object_id
        assert response.context["original"].pk == target.pk
    history = reverse("admin:django_jobqueue_job_history", args=[target.job_id])
    assert admin_client.get(history).status_code == 200
    delete = reverse("admin:django_jobqueue_job_delete", args=[target.job_id])
    assert admin_client.get(delete).status_code == 200
    missing = admin_client.get(change_url(target, "no-such-job"))
    assert missing.status_code == 302, "Django's answer to an unknown id: back, with a message"


def test_a_dead_letter_page_by_its_job_id_shows_the_newest(admin_client):
    first = letter(job_id="job-1")
    newest = letter(job_id="job-1")
    response = admin_client.get(change_url(first, "job-1"))
    assert response.status_code == 200
    assert response.context["original"].pk == newest.pk
    assert admin_client.get(change_url(first)).context["original"].pk == first.pk


def test_a_numeric_job_id_that_is_no_primary_key_is_found(admin_client):
    target = job(job_id="987654321")
    assert admin_client.get(change_url(target, "987654321")).context["original"].pk == target.pk


# -- the overview from the admin index -------------------------------------------------------


def test_the_app_index_links_the_queue_overview(admin_client, client, django_user_model):
    html = admin_client.get(APP_INDEX).content.decode()
    assert f'href="{OVERVIEW}"' in html
    assert "/admin/django_jobqueue/job/" in html and "/admin/django_jobqueue/deadletter/" in html
    # Only for those who may see it.
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("letters", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_deadletter"))
    client.force_login(user)
    assert f'href="{OVERVIEW}"' not in client.get(APP_INDEX).content.decode()


# -- result ttl with its unit, no History button ---------------------------------------------


def test_seconds_in_words():
    assert seconds_in_words(3600) == "3600 s (1 hour)"
    assert seconds_in_words(5400) == "5400 s (1 hour 30 minutes)"
    assert seconds_in_words(86400 * 2 + 60) == "172860 s (2 days 1 minute)"
    assert seconds_in_words(90) == "90 s (1 minute 30 seconds)"
    assert seconds_in_words(45) == "45 s"
    assert seconds_in_words(None) == "-"


def test_result_ttl_has_its_unit_and_no_history_button(admin_client):
    target = job(result_ttl=3600)
    dead = letter(result_ttl=300)
    html = admin_client.get(change_url(target)).content.decode()
    assert "3600 s (1 hour)" in html and "Result ttl" in html
    assert "How long the job&#x27;s outcome (its result or its error) is kept" in html
    assert "3600</div>" not in html
    assert "300 s (5 minutes)" in admin_client.get(change_url(dead)).content.decode()
    for obj in (target, dead):
        html = admin_client.get(change_url(obj)).content.decode()
        assert 'class="historylink"' not in html
        assert "/history/" not in html


# -- huge values: cut in SQL, said so --------------------------------------------------------


def test_a_huge_argument_result_and_error_are_cut_on_the_page(admin_client):
    big = ["y" * 1000] * 400  # about 400 K characters of JSON
    target = job(args=big, kwargs={"k": big}, status="completed", last_error="E" * 300_000)
    JobResult.objects.create(job=target, result={"rows": big})
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(change_url(target))
    html = response.content.decode()
    assert response.status_code == 200
    assert len(html) < 6 * VALUE_CAP, "at most VALUE_CAP characters of each value"
    # args, kwargs, result, and the last attempt's error
    assert html.count("Cut: showing the first 64 K characters of") == 4
    assert "392 K characters" in html  # how much there is
    original = response.context["original"]
    assert {"args", "kwargs", "last_error"} <= original.get_deferred_fields()
    assert not any('"django_jobqueue_jobresult"."result",' in q["sql"] for q in queries)


def test_a_small_value_is_whole_and_indented(admin_client):
    target = job(args=[{"b": 1, "a": [1, 2]}])
    html = admin_client.get(change_url(target)).content.decode()
    assert '<pre class="djq-pre">[\n  {\n    &quot;a&quot;: [\n      1,\n      2\n' in html
    assert "Cut:" not in html


def test_a_dead_letter_with_a_huge_error_and_traceback(admin_client):
    dead = letter(error="MemoryError: " + "z" * 500_000, traceback="  frame\n" * 100_000)
    response = admin_client.get(change_url(dead))
    html = response.content.decode()
    assert len(html) < 4 * VALUE_CAP
    assert html.count("Cut: showing the first 64 K characters of") == 2
    assert {"error", "traceback", "args", "kwargs"} <= response.context[
        "original"
    ].get_deferred_fields()


def test_the_job_list_never_loads_arguments(admin_client):
    job(args=["w" * 500_000])
    response = admin_client.get(JOBS)
    assert len(response.content) < 100_000


# -- short columns ---------------------------------------------------------------------------


def test_long_values_in_the_lists_are_cut_with_the_whole_value_on_hover(admin_client):
    long_name = "shop.integrations.partner_api.jobs.synchronise_every_order"
    target = job(name=long_name, queue="partner-integrations")
    html = admin_client.get(JOBS).content.decode()
    assert f'<span title="{long_name}">…{long_name[-(NAME_CHARS - 1) :]}</span>' in html
    clip = '<span class="djq-clip" style="max-width: {}ch" title="{}">{}</span>'
    assert clip.format(7, target.job_id, target.job_id) in html, "cut by CSS, whole in the page"
    assert clip.format(8, "partner-integrations", "partner-integrations") in html
    column = short_column("name", "name", 10, keep_end=True)
    assert column(Job(name="a.b.c")) == "a.b.c"
    assert column(Job(name="shop.jobs.send")) == '<span title="shop.jobs.send">…jobs.send</span>'
    assert column(Job(name="shop.jobs.send_mail")) == (
        '<span title="shop.jobs.send_mail">…send_mail</span>'  # cut at a dot
    )


def test_the_overview_of_thousands_of_queues_stays_a_page(admin_client):
    """20,000 queues made a 16.7 MB page: the busiest 100 are listed, the rest counted."""
    from django.urls import reverse

    from django_jobqueue.admin.overview import OVERVIEW_QUEUES
    from tests.testapp.jobs import add

    queues = [f"tenant-{n:04d}" for n in range(OVERVIEW_QUEUES + 150)]
    add.using(queue="busiest").enqueue_many([(1, 2)] * 5)
    for queue in queues:
        add.using(queue=queue).enqueue(1, 2)
    response = admin_client.get(reverse("admin:django_jobqueue_job_overview"))
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count('class="djq-queue"') == OVERVIEW_QUEUES
    assert 'data-queue="busiest"' in page
    more = re.search(r"(\d+) more queues not shown", page)
    assert more is not None and int(more.group(1)) >= 151  # and the known empty queues
    assert len(page) < 2_000_000


# -- the cancel action ---------------------------------------------------------------------------


def _cancel_action(client, jobs):
    data = {"action": "cancel_selected", "_selected_action": [str(job.pk) for job in jobs]}
    return client.post(reverse("admin:django_jobqueue_job_changelist"), data, follow=True)


def test_the_cancel_action_cancels_queued_jobs_and_flags_running_ones(admin_client):
    queued = Job.objects.get(job_id=add.enqueue(1, 2).id)
    running = Job.objects.get(job_id=add.enqueue(3, 4).id)
    Job.objects.filter(pk=running.pk).update(status="running", attempts=1, worker="w")
    finished = Job.objects.get(job_id=add.enqueue(5, 6).id)
    Job.objects.filter(pk=finished.pk).update(status="completed")
    page = _cancel_action(admin_client, [queued, running, finished]).content.decode()
    assert "Cancelled 2 jobs" in page and "1 job had already finished" in page
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses == {queued.pk: "cancelled", running.pk: "running", finished.pk: "completed"}
    assert Job.objects.get(pk=running.pk).cancel_requested


def test_the_cancel_action_needs_the_change_permission(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_job"))
    client.force_login(user)
    queued = Job.objects.get(job_id=add.enqueue(1, 2).id)
    page = client.get(reverse("admin:django_jobqueue_job_changelist")).content.decode()
    assert "cancel_selected" not in page
    _cancel_action(client, [queued])
    assert Job.objects.get(pk=queued.pk).status == "queued"
