"""The admin: every URL, filters, read-only detail pages, requeue and delete, permissions,
query counts on large lists, the overview page, and the requeue logic behind the buttons."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from model_bakery import baker

from django_jobqueue import get_job
from django_jobqueue.admin import CappedCountPaginator, human_seconds
from django_jobqueue.deadletters import requeue, requeue_report
from django_jobqueue.models import DeadLetter, Job, JobResult
from tests.conftest import run_concurrently
from tests.testapp.jobs import add, always_fails, fails_then_succeeds, other_queue

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:django_jobqueue_job_changelist")
LETTERS = reverse("admin:django_jobqueue_deadletter_changelist")
OVERVIEW = reverse("admin:django_jobqueue_job_overview")


def job_url(job: Job) -> str:
    return reverse("admin:django_jobqueue_job_change", args=[job.pk])


def letter_url(letter: DeadLetter, view: str = "change") -> str:
    return reverse(f"admin:django_jobqueue_deadletter_{view}", args=[letter.pk])


def make_dead_letter(run_worker, *args, job=always_fails, kwargs=None, **options) -> DeadLetter:
    """A real dead letter: the job fails its only attempt on a worker."""
    handle = job.using(max_attempts=1, **options).enqueue(*args, **(kwargs or {}))
    run_worker(queues=[options.get("queue", "default")])
    return DeadLetter.objects.filter(job_id=handle.id).latest("id")


def action(client: Client, name: str, letters: list[DeadLetter], **extra):
    data = {"action": name, "_selected_action": [str(x.pk) for x in letters], **extra}
    return client.post(LETTERS, data, follow=True)


def listed(response) -> list:
    return list(response.context["cl"].result_list)


def staff(*codenames: str, username: str = "staff") -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def population(run_worker, tmp_path):
    """Jobs in every state and queue, and one dead letter."""
    done = add.enqueue(1, 2)
    other = other_queue.enqueue({"x": [1, 2]})
    letter = make_dead_letter(run_worker, "poison")
    run_worker()
    queued = add.enqueue(5, 6)
    return {"done": done, "other": other, "letter": letter, "queued": queued}


# -- every URL --------------------------------------------------------------------------------


def test_every_admin_url_answers(admin_client, population):
    letter = population["letter"]
    jobs = list(Job.objects.all())
    assert len(jobs) == 4
    ok = [
        reverse("admin:index"),
        reverse("admin:app_list", args=["django_jobqueue"]),
        JOBS,
        OVERVIEW,
        LETTERS,
        letter_url(letter),
        letter_url(letter, "history"),
        letter_url(letter, "delete"),
        *(job_url(job) for job in jobs),
        *(reverse("admin:django_jobqueue_job_history", args=[job.pk]) for job in jobs),
        f"{JOBS}?status__exact=completed",
        f"{JOBS}?queue=other",
        f"{JOBS}?name={add.name}",
        f"{JOBS}?q={population['done'].id}",
        f"{LETTERS}?queue=default",
        f"{LETTERS}?name={always_fails.name}",
        f"{LETTERS}?q=always",
    ]
    for url in ok:
        assert admin_client.get(url).status_code == 200, url
    # Jobs and dead letters are made by the queue, not typed in.
    assert admin_client.get(reverse("admin:django_jobqueue_job_add")).status_code == 403
    assert admin_client.get(reverse("admin:django_jobqueue_deadletter_add")).status_code == 403
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "/admin/django_jobqueue/job/add/" not in index


def test_the_job_list_shows_the_columns(admin_client, population):
    response = admin_client.get(JOBS)
    html = response.content.decode()
    columns = ["job_id", "name", "queue", "status_display", "attempts_display", "enqueued"]
    for column in [*columns, "started", "finished", "duration_display"]:
        assert f'class="sortable column-{column}' in html or f'class="column-{column}' in html
    done = Job.objects.get(job_id=population["done"].id)
    assert human_seconds(done.duration) in html
    assert "1 / 3" in html and "1 / 1" in html  # attempts of max_attempts
    assert OVERVIEW in html, "the job list links to the overview"


# -- filters and search -----------------------------------------------------------------------


def test_job_filters_and_search(admin_client, population):
    def ids(query: str) -> set[str]:
        return {job.job_id for job in listed(admin_client.get(f"{JOBS}?{query}"))}

    done, other, queued = population["done"], population["other"], population["queued"]
    failed = population["letter"].job_id
    assert ids("status__exact=completed") == {done.id, other.id}
    assert ids("status__exact=queued") == {queued.id}
    assert ids("status__exact=failed") == {failed}
    assert ids("queue=other") == {other.id}
    assert ids(f"name={add.name}") == {done.id, queued.id}
    assert ids(f"name={add.name}&status__exact=queued") == {queued.id}
    assert ids(f"q={done.id}") == {done.id}
    assert ids("q=always_fails") == {failed}
    assert ids("q=no-such-job") == set()
    with CaptureQueriesContext(connection) as queries:
        assert ids(f"q={done.id}") == {done.id}
    assert not [q for q in queries if "LIKE" in q["sql"].upper()], "a whole id: index lookups"


def test_name_and_queue_filters_list_registered_jobs_without_scanning_the_table(
    admin_client, population
):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(f"{JOBS}?name=an.undeployed.job")
    assert listed(response) == []
    specs = {spec.title: spec for spec in response.context["cl"].filter_specs}
    names = [choice["display"] for choice in specs["name"].choices(response.context["cl"])]
    assert add.name in names and always_fails.name in names
    assert "an.undeployed.job" in names, "the value in the URL stays selectable"
    queues = [choice["display"] for choice in specs["queue"].choices(response.context["cl"])]
    assert {"default", "other"} <= set(queues)
    assert not [q for q in queries if "DISTINCT" in q["sql"].upper()]


def test_dead_letter_filters_and_search(admin_client, run_worker):
    first = make_dead_letter(run_worker, "a")
    second = make_dead_letter(run_worker, "b", queue="other")

    def ids(query: str) -> set[str]:
        return {x.job_id for x in listed(admin_client.get(f"{LETTERS}?{query}"))}

    assert ids("") == {first.job_id, second.job_id}
    assert ids("queue=other") == {second.job_id}
    assert ids(f"name={always_fails.name}") == {first.job_id, second.job_id}
    assert ids(f"q={first.job_id}") == {first.job_id}


# -- detail pages -----------------------------------------------------------------------------


def test_job_detail_is_read_only_with_arguments_and_result(admin_client, population):
    other = Job.objects.get(job_id=population["other"].id)
    response = admin_client.get(job_url(other))
    html = response.content.decode()
    assert '<pre class="djq-pre">[\n  {\n    &quot;x&quot;: [\n      1,\n      2\n' in html
    # other_queue returns its argument: the result is shown as pretty JSON too.
    assert html.count("&quot;x&quot;: [") == 2
    assert (
        'name="_save"' not in html and "<textarea" not in html and '<input type="text"' not in html
    )
    assert admin_client.post(job_url(other), {"queue": "hacked"}).status_code == 403
    other.refresh_from_db()
    assert other.queue == "other"


def test_failed_job_detail_shows_error_traceback_and_its_dead_letter(admin_client, population):
    letter = population["letter"]
    failed = Job.objects.get(job_id=letter.job_id)
    html = admin_client.get(job_url(failed)).content.decode()
    assert '<pre class="djq-pre">RuntimeError: poison</pre>' in html
    assert "raise RuntimeError(message)" in html
    assert letter_url(letter) in html


def test_dead_letter_detail_shows_arguments_error_and_traceback(admin_client, run_worker):
    letter = make_dead_letter(run_worker, "<script>alert(1)</script>")
    html = admin_client.get(letter_url(letter)).content.decode()
    assert "<script>alert(1)</script>" not in html, "arguments and errors are escaped"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<pre class="djq-pre">[\n  &quot;&lt;script&gt;' in html
    assert "Traceback (most recent call last)" in html
    assert "raise RuntimeError(message)" in html
    assert 'class="djq-requeue-form"' in html and letter_url(letter, "requeue") in html
    assert 'name="_save"' not in html
    assert job_url(Job.objects.get(job_id=letter.job_id)) in html


def test_dead_letter_list_shows_a_one_line_error(admin_client):
    baker.make(
        DeadLetter,
        job_id="multi",
        error="ValueError: first line\nsecond line\nthe last line",
        args=[],
        kwargs={},
        attempts=3,
        max_attempts=3,
        result_ttl=60,
        enqueued_at=timezone.now(),
    )
    html = admin_client.get(LETTERS).content.decode()
    assert "the last line" in html and "second line" not in html and "3</td>" in html


# -- requeue through the admin ----------------------------------------------------------------


def test_requeue_action_runs_the_job_again(admin_client, run_worker, tmp_path):
    letter = make_dead_letter(run_worker, str(tmp_path / "n"), 1, job=fails_then_succeeds)
    response = action(admin_client, "requeue_selected", [letter])
    assert "Requeued 1 dead letter" in response.content.decode()
    assert not DeadLetter.objects.exists()
    job = Job.objects.get(job_id=letter.job_id)
    assert (job.status, job.attempts, job.args) == ("queued", 0, letter.args)
    run_worker()
    handle = get_job(letter.job_id)
    assert (handle.status, handle.result) == ("completed", 2)
    assert "Completed" in admin_client.get(job_url(Job.objects.get(pk=job.pk))).content.decode()


def test_requeue_clicked_twice_makes_one_job(admin_client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    action(admin_client, "requeue_selected", [letter])
    second = action(admin_client, "requeue_selected", [letter])
    assert "already been requeued or deleted" in second.content.decode()
    assert Job.objects.filter(job_id=letter.job_id).count() == 1
    assert Job.objects.get(job_id=letter.job_id).status == "queued"
    assert not DeadLetter.objects.exists()


def test_requeue_button_on_the_dead_letter_page(admin_client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    url = letter_url(letter, "requeue")
    assert admin_client.get(url).status_code == 405, "GET never requeues"
    response = admin_client.post(url)
    job = Job.objects.get(job_id=letter.job_id)
    assert response.status_code == 302 and response["Location"] == job_url(job)
    assert job.status == "queued" and not DeadLetter.objects.exists()
    again = admin_client.post(url, follow=True)
    assert "already been requeued or deleted" in again.content.decode()
    assert Job.objects.filter(job_id=letter.job_id).count() == 1


def test_requeue_button_needs_the_csrf_token(run_worker, admin_user):
    letter = make_dead_letter(run_worker, "x")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(letter_url(letter, "requeue")).status_code == 403
    assert DeadLetter.objects.filter(pk=letter.pk).exists()


def test_requeue_of_a_job_that_is_queued_again_is_skipped(admin_client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    Job.objects.filter(job_id=letter.job_id).delete()  # its result expired and was pruned
    add.using(job_id=letter.job_id).enqueue(1, 1)  # and the id was used again
    fresh = Job.objects.get(job_id=letter.job_id)
    response = action(admin_client, "requeue_selected", [letter])
    assert "Skipped 1 dead letter" in response.content.decode()
    assert DeadLetter.objects.filter(pk=letter.pk).exists(), "the dead letter is kept"
    job = Job.objects.get(job_id=letter.job_id)
    assert (job.pk, job.name, job.status) == (fresh.pk, add.name, "queued")


def test_delete_action(admin_client, run_worker):
    letters = [make_dead_letter(run_worker, "x"), make_dead_letter(run_worker, "y")]
    confirm = action(admin_client, "delete_selected", letters)
    assert "Are you sure" in confirm.content.decode()
    action(admin_client, "delete_selected", letters, post="yes")
    assert not DeadLetter.objects.exists()


# -- permissions ------------------------------------------------------------------------------


def test_view_only_staff_see_but_cannot_requeue_or_delete(client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    client.force_login(staff("view_deadletter", "view_job"))
    response = client.get(LETTERS)
    assert response.status_code == 200 and listed(response) == [letter]
    assert response.context["action_form"] is None
    assert "requeue_selected" not in response.content.decode()
    detail = client.get(letter_url(letter))
    assert detail.status_code == 200 and 'class="djq-requeue-form"' not in detail.content.decode()
    assert client.post(letter_url(letter, "requeue")).status_code == 403
    action(client, "requeue_selected", [letter])
    action(client, "delete_selected", [letter], post="yes")
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert Job.objects.get(job_id=letter.job_id).status == "failed"
    assert client.get(OVERVIEW).status_code == 200


def test_change_permission_requeues_delete_permission_deletes(client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    client.force_login(staff("view_deadletter", "change_deadletter"))
    choices = dict(client.get(LETTERS).context["action_form"].fields["action"].choices)
    assert "requeue_selected" in choices and "delete_selected" not in choices
    assert client.post(letter_url(letter, "requeue")).status_code == 302
    assert Job.objects.get(job_id=letter.job_id).status == "queued"

    other = make_dead_letter(run_worker, "y")
    client.force_login(staff("view_deadletter", "delete_deadletter", username="deleter"))
    choices = dict(client.get(LETTERS).context["action_form"].fields["action"].choices)
    assert "delete_selected" in choices and "requeue_selected" not in choices
    assert client.post(letter_url(other, "requeue")).status_code == 403


def test_staff_without_permissions_get_nothing(client, run_worker):
    letter = make_dead_letter(run_worker, "x")
    client.force_login(staff())
    for url in [JOBS, LETTERS, OVERVIEW, letter_url(letter)]:
        assert client.get(url).status_code == 403, url
    client.logout()
    response = client.post(letter_url(letter, "requeue"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert DeadLetter.objects.filter(pk=letter.pk).exists()


# -- large tables -----------------------------------------------------------------------------


def _queries(client: Client, url: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return [query["sql"] for query in captured]


def test_job_list_queries_do_not_grow_with_rows(admin_client, run_worker):
    add.enqueue_many([(i, i) for i in range(3)])
    make_dead_letter(run_worker, "x")
    add.enqueue(9, 9)
    assert Job.objects.count() == 5
    few = _queries(admin_client, JOBS)
    add.enqueue_many([(i, i) for i in range(45)])
    many = _queries(admin_client, JOBS)
    assert len(many) == len(few)
    rows = [sql for sql in many if '"django_jobqueue_job"."enqueued_at"' in sql]
    assert rows and all('"args"' not in sql and '"kwargs"' not in sql for sql in rows)
    counts = [sql for sql in many if "COUNT(" in sql.upper()]
    assert len(counts) == 1 and "LIMIT" in counts[0].upper(), "the count is capped"


def test_dead_letter_list_queries_do_not_grow_with_rows(admin_client):
    def letters(n: int) -> None:
        baker.make(
            DeadLetter,
            _quantity=n,
            args=[1],
            kwargs={},
            error="RuntimeError: boom",
            traceback="Traceback...\n" * 50,
            attempts=3,
            max_attempts=3,
            result_ttl=60,
            enqueued_at=timezone.now(),
        )

    letters(5)
    few = _queries(admin_client, LETTERS)
    letters(45)
    many = _queries(admin_client, LETTERS)
    assert len(many) == len(few)
    assert not [sql for sql in many if '"traceback"' in sql], "the list never loads tracebacks"


def test_a_long_list_says_more_than_instead_of_counting_everything(
    admin_client, monkeypatch, run_worker
):
    monkeypatch.setattr(CappedCountPaginator, "cap", 3)
    add.enqueue_many([(i, i) for i in range(5)])
    html = admin_client.get(JOBS).content.decode()
    assert "More than 3 jobs" in html
    html = admin_client.get(f"{JOBS}?status__exact=queued&q=nothing").content.decode()
    assert "0 jobs" in html and "More than" not in html


# -- the overview -----------------------------------------------------------------------------


def test_overview_counts_waiting_and_chart(admin_client, run_worker):
    now = timezone.now()
    first, second = add.enqueue(1, 1), add.enqueue(2, 2)
    make_dead_letter(run_worker, "boom")
    run_worker()
    # One completed job ten minutes ago, one two hours ago (out of the chart).
    Job.objects.filter(job_id=first.id).update(finished_at=now - timedelta(minutes=10))
    Job.objects.filter(job_id=second.id).update(finished_at=now - timedelta(hours=2))
    waiting = other_queue.enqueue(1)
    Job.objects.filter(job_id=waiting.id).update(enqueued_at=now - timedelta(minutes=5))
    other_queue.enqueue(2)
    other_queue.using(run_after=timedelta(hours=1)).enqueue(3)  # delayed: not waiting yet

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(OVERVIEW)
    assert response.status_code == 200
    overview = response.context["overview"]
    queues = {queue.queue: queue for queue in overview.queues}
    default, other = queues["default"], queues["other"]
    assert default.counts == {"completed": 2, "failed": 1}
    assert default.dead_letters == 1 and default.waiting_since is None
    assert other.counts == {"queued": 3}
    assert other.oldest_waiting.startswith("5 min")
    assert default.finished_last_hour == 2  # the failed one and the one ten minutes ago
    assert default.minutes[-11][0] == 1, "ten minutes ago: one completed"
    assert overview.total.counts == {"completed": 2, "failed": 1, "queued": 3}
    html = response.content.decode()
    assert "<svg" in html and ": 1 completed, 0 failed</title>" in html
    assert 'href="/admin/django_jobqueue/job/?status__exact=queued&amp;queue=other"' in html
    job_queries = [q["sql"] for q in captured if "django_jobqueue_job" in q["sql"]]
    assert len(job_queries) == 3, "counts, oldest waiting and chart: one grouped query each"

    add.enqueue_many([(i, i) for i in range(30)])
    other_queue.enqueue_many([(i,) for i in range(30)])
    with CaptureQueriesContext(connection) as again:
        admin_client.get(OVERVIEW)
    assert len(again) == len(captured)


# -- the requeue function ---------------------------------------------------------------------


def test_requeue_replaces_the_finished_job_and_keeps_its_options(run_worker, tmp_path):
    letter = make_dead_letter(
        run_worker,
        str(tmp_path / "n"),
        kwargs={"fail_times": 1},
        job=fails_then_succeeds,
        queue="q2",
        priority=3,
        group="g",
        result_ttl=77,
    )
    old = Job.objects.get(job_id=letter.job_id)
    assert JobResult.objects.filter(job=old).exists()
    assert requeue(DeadLetter.objects.all()) == 1
    new = Job.objects.get(job_id=letter.job_id)
    assert new.pk != old.pk and not JobResult.objects.filter(job_id=old.pk).exists()
    assert (new.status, new.attempts, new.finished_at, new.last_error) == ("queued", 0, None, "")
    assert (new.name, new.queue, new.args, new.kwargs) == (
        fails_then_succeeds.name,
        "q2",
        [str(tmp_path / "n")],
        {"fail_times": 1},
    )
    assert (new.priority, new.group, new.max_attempts, new.result_ttl) == (3, "g", 1, 77)
    assert not DeadLetter.objects.exists()
    run_worker(queues=["q2"])
    assert get_job(letter.job_id).result == 2


def test_requeue_takes_ids_instances_or_querysets_and_a_pruned_job(run_worker):
    letters = [make_dead_letter(run_worker, str(i)) for i in range(3)]
    Job.objects.all().delete()  # pruned: the dead letters outlive the jobs
    assert requeue([letters[0].pk]) == 1
    assert requeue([letters[1]]) == 1
    assert requeue(DeadLetter.objects.filter(pk=letters[2].pk)) == 1
    assert Job.objects.filter(status="queued").count() == 3
    assert requeue([letters[0].pk]) == 0 and requeue([]) == 0


def test_requeue_keeps_a_dead_letter_whose_job_is_active(run_worker):
    letter = make_dead_letter(run_worker, "x")
    Job.objects.filter(job_id=letter.job_id).update(status="running")  # someone reran it
    report = requeue_report([letter.pk])
    assert (report.requeued, report.skipped) == ([], [letter.job_id])
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    assert Job.objects.get(job_id=letter.job_id).status == "running"


def test_two_dead_letters_of_one_id_requeue_once(run_worker):
    letter = make_dead_letter(run_worker, "x")
    Job.objects.filter(job_id=letter.job_id).delete()
    again = make_dead_letter(run_worker, "x", job_id=letter.job_id)
    report = requeue_report(DeadLetter.objects.all())
    assert (report.requeued, report.skipped) == ([letter.job_id], [letter.job_id])
    assert list(DeadLetter.objects.all()) == [again], "the first requeued, the second kept"
    assert Job.objects.filter(job_id=letter.job_id).count() == 1


def test_requeue_wakes_workers_on_commit(run_worker, django_capture_on_commit_callbacks):
    letter = make_dead_letter(run_worker, "x", queue="mail")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        requeue([letter])
    assert len(callbacks) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requeues_of_one_dead_letter_make_one_job(run_worker):
    letters = [make_dead_letter(run_worker, str(i)) for i in range(3)]

    def click() -> int:
        return requeue(DeadLetter.objects.filter(pk__in=[x.pk for x in letters]))

    results = run_concurrently(*[click] * 4)  # raises what a click raised
    assert sorted(results, reverse=True)[0] == 3 and sum(results) == 3
    assert not DeadLetter.objects.exists()
    assert Job.objects.filter(status="queued").count() == 3
    assert Job.objects.count() == 3


def test_running_jobs_show_their_progress_in_the_list_and_on_their_page(admin_client):
    running = add.enqueue(1, 2)
    Job.objects.filter(job_id=running.id).update(
        status="running",
        progress={"current": 40, "total": 100, "message": "rendering <b>", "updated_at": "t"},
    )
    counting = add.enqueue(2, 3)
    Job.objects.filter(job_id=counting.id).update(
        status="running", progress={"current": 7, "total": None, "message": "", "updated_at": "t"}
    )
    queued = add.enqueue(3, 4)
    html = admin_client.get("/admin/django_jobqueue/job/").content.decode()
    # In the list, a bar as narrow as the status, the amount and the message on hover.
    assert 'title="40 / 100 rendering &lt;b&gt;"><progress max="100" value="40">' in html
    assert '<span class="djq-progress" title="7">7</span>' in html
    assert html.count('class="djq-progress') == 2  # not for the queued job
    page = admin_client.get(f"/admin/django_jobqueue/job/{running.id}/change/").content.decode()
    assert "field-progress_display" in page and "40 / 100 rendering &lt;b&gt;" in page
    page = admin_client.get(f"/admin/django_jobqueue/job/{queued.id}/change/").content.decode()
    assert "field-progress_display" in page and 'class="djq-progress"' not in page
