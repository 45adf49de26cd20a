"""The admin as a console: run again, retry now, every action on all N matching rows in
batches (count, confirmation, new rows left out), search by id and text in a bounded window,
and every action in the admin's history with its user."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_jobqueue import get_job
from django_jobqueue.admin import bulk, search
from django_jobqueue.base import REQUEUE_FIELDS
from django_jobqueue.control import retry_now
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.rerunning import STILL_ACTIVE, UNIQUE_ACTIVE, run_again
from tests.test_admin import make_dead_letter, staff
from tests.testapp.jobs import add
from tests.testapp.unique_jobs import refresh_account

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:django_jobqueue_job_changelist")
LETTERS = reverse("admin:django_jobqueue_deadletter_changelist")

#: Rows for the "select all N" tests, on both databases.
MANY = 5_000


def post(client: Client, url: str, name: str, pks, **extra):
    """The changelist's action form: ``pks`` checked on the page, ``name`` chosen."""
    data = {"action": name, "index": "0", "_selected_action": [str(pk) for pk in pks], **extra}
    return client.post(url, data, follow=True)


def confirm(client: Client, url: str, page):
    """Press "Yes, I'm sure" on a confirmation page: post its form's fields as they are."""
    form = page.context
    data = {
        "action": form["action_name"],
        "_selected_action": list(form["selected"]),
        "post": "yes",
    }
    if form["across"]:
        data.update(select_across="1", djq_upto=str(form["upto"]))
    return client.post(url, data, follow=True)


def shown_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def history(model, flag=None):
    entries = LogEntry.objects.filter(content_type__model=model._meta.model_name)
    return entries.filter(action_flag=flag) if flag is not None else entries


# -- run again --------------------------------------------------------------------------------


def test_run_again_writes_a_new_job_with_the_same_arguments_and_options(admin_client, run_worker):
    handle = add.using(priority=7, group="g", max_attempts=4, result_ttl=99, time_limit=5).enqueue(
        2, 3
    )
    run_worker()
    old = Job.objects.get(job_id=handle.id)
    Job.objects.filter(pk=old.pk).update(metadata={"tenant": "acme"})
    response = post(admin_client, JOBS, "run_again_selected", [old.pk])
    assert "Ran again 1 job." in " ".join(shown_messages(response))
    new = Job.objects.exclude(pk=old.pk).get()
    old.refresh_from_db()
    assert old.status == "completed", "the run it repeats keeps its row and result"
    for name in REQUEUE_FIELDS:
        if name != "job_id":
            assert getattr(new, name) == getattr(old, name), name
    assert new.job_id != old.job_id and new.status == "queued" and new.attempts == 0
    entry = history(Job).get()
    assert (entry.object_id, entry.action_flag) == (str(old.pk), CHANGE)
    assert (
        entry.user.username == "admin" and entry.change_message == f"Ran again as job {new.job_id}"
    )
    run_worker()
    assert get_job(new.job_id).result == 5


def test_run_again_skips_unfinished_jobs_and_says_so(admin_client):
    queued = add.enqueue(1, 1)
    pk = Job.objects.get(job_id=queued.id).pk
    response = post(admin_client, JOBS, "run_again_selected", [pk])
    assert "Skipped 1 job not finished (queued, blocked or running): left unchanged." in (
        shown_messages(response)
    )
    assert Job.objects.count() == 1 and not history(Job).exists()


def test_run_again_of_a_unique_job_keeps_its_id_and_runs_once_at_a_time(run_worker):
    handle = refresh_account.enqueue(42)
    run_worker()
    done = Job.objects.get(job_id=handle.id)
    assert handle.id.startswith("u:")
    report = run_again([done.pk, done.pk])
    assert report.started == {done.pk: handle.id}, "the uniqueness key of these arguments"
    again = Job.objects.get(job_id=handle.id)
    assert again.pk != done.pk and again.status == "queued", "the finished row is replaced"
    assert run_again([again.pk]).skipped == {again.pk: STILL_ACTIVE}
    run_worker()
    finished = Job.objects.get(job_id=handle.id)
    refresh_account.enqueue(42)  # within result_ttl: the finished run is returned, no new one
    assert Job.objects.get(job_id=handle.id).pk == finished.pk


def test_run_again_of_a_unique_job_whose_id_is_queued_again_is_skipped(run_worker):
    handle = refresh_account.enqueue(7)
    run_worker()
    letter_like = Job.objects.get(job_id=handle.id)
    Job.objects.filter(pk=letter_like.pk).update(status="failed")
    again = run_again([letter_like.pk])
    assert again.started
    fresh = Job.objects.get(job_id=handle.id)
    # A finished copy of the same id (a dead letter) while the id is queued: skipped.
    letter = DeadLetter.objects.create(
        **{name: getattr(fresh, name) for name in REQUEUE_FIELDS},
        attempts=1,
        error="boom",
        enqueued_at=fresh.enqueued_at,
    )
    assert run_again([letter.pk], dead_letters=True).skipped == {letter.pk: UNIQUE_ACTIVE}
    assert Job.objects.filter(job_id=handle.id).count() == 1


def test_run_again_of_a_dead_letter_keeps_the_letter(admin_client, run_worker):
    letter = make_dead_letter(run_worker, "boom", priority=3)
    response = post(admin_client, LETTERS, "run_again_selected", [letter.pk])
    assert "Ran again 1 dead letter." in " ".join(shown_messages(response))
    assert DeadLetter.objects.filter(pk=letter.pk).exists()
    new = Job.objects.exclude(job_id=letter.job_id).get()
    assert (new.name, new.args, new.priority, new.status) == (letter.name, ["boom"], 3, "queued")
    entry = history(DeadLetter).get()
    assert entry.change_message == f"Ran again as job {new.job_id}"


def test_run_again_does_not_take_the_workflow_or_the_batch(run_worker):
    parent = add.enqueue(1, 1)
    child = add.using(after=parent).enqueue(2, 2)
    run_worker()
    done = Job.objects.get(job_id=child.id)
    assert done.status == "completed"
    report = run_again([done.pk])
    new = Job.objects.get(job_id=report.started[done.pk])
    assert new.status == "queued" and not new.parent_links.exists() and new.batch_id is None


# -- retry now ---------------------------------------------------------------------------------


def test_retry_now_starts_a_waiting_retry(admin_client, run_worker):
    handle = add.enqueue(2, 2)
    # The state a failed first attempt leaves (the worker's retry): queued, one attempt, a
    # back-off of an hour.
    Job.objects.filter(job_id=handle.id).update(
        attempts=1, run_after=timezone.now() + timedelta(hours=1), last_error="boom"
    )
    job = Job.objects.get(job_id=handle.id)
    run_worker()
    assert get_job(handle.id).status == "queued", "it waits for its back-off"
    deferred = add.using(run_after=timedelta(hours=1)).enqueue(1, 2)
    deferred_pk = Job.objects.get(job_id=deferred.id).pk
    response = post(admin_client, JOBS, "retry_now_selected", [job.pk, deferred_pk])
    messages = shown_messages(response)
    assert "Started the retries of 1 job." in messages
    assert "Skipped 1 job not waiting for a retry (finished, blocked, ready or deferred)." in (
        messages
    )
    job.refresh_from_db()
    assert job.run_after is None
    assert Job.objects.get(pk=deferred_pk).run_after is not None, "a first run keeps its delay"
    assert history(Job).get().object_id == str(job.pk)
    run_worker()
    assert get_job(handle.id).status == "completed"


def test_retry_now_leaves_running_jobs_and_says_so(admin_client):
    handle = add.enqueue(1, 2)
    Job.objects.filter(job_id=handle.id).update(status="running", attempts=1)
    pk = Job.objects.get(job_id=handle.id).pk
    response = post(admin_client, JOBS, "retry_now_selected", [pk])
    assert "Skipped 1 job running: retry now starts a queued retry only." in (
        shown_messages(response)
    )
    assert retry_now([handle.id]) == []
    assert Job.objects.get(pk=pk).status == "running" and not history(Job).exists()


# -- select all N matching, in batches ------------------------------------------------------------


def test_every_action_on_all_matching_rows_in_batches(admin_client):
    """5,000 queued jobs (and 10 completed ones): cancel all the queued (the count first, then
    10 batches), run the cancelled again, delete them; rows that arrive after the count are
    left; each row gets its history entry."""
    add.enqueue_many([(index, 1) for index in range(MANY)])
    others = add.enqueue_many([(index, 2) for index in range(10)])
    Job.objects.filter(job_id__in=[h.id for h in others]).update(status="completed")
    page = list(Job.objects.filter(status="queued").values_list("pk", flat=True)[:100])
    url = f"{JOBS}?status__exact=queued"

    asked = post(admin_client, url, "cancel_selected", page, select_across="1")
    assert asked.templates[0].name == "admin/django_jobqueue/bulk_confirmation.html"
    assert "5,000 jobs" in asked.content.decode()
    assert Job.objects.filter(status="queued").count() == MANY, "nothing before the yes"
    late = add.enqueue(0, 0)  # matches the filter, but after the count
    done = confirm(admin_client, url, asked)
    assert "Cancelled 5,000 jobs in 10 batches." in " ".join(shown_messages(done))
    assert Job.objects.filter(status="cancelled").count() == MANY
    assert get_job(late.id).status == "queued", "a row that arrived after the count is left"
    assert history(Job, CHANGE).filter(change_message="Cancelled").count() == MANY

    url = f"{JOBS}?status__exact=cancelled"
    asked = post(admin_client, url, "run_again_selected", page, select_across="1")
    done = confirm(admin_client, url, asked)
    assert "Ran again 5,000 jobs in 10 batches." in " ".join(shown_messages(done))
    assert Job.objects.filter(status="queued").count() == MANY + 1

    asked = post(admin_client, url, "delete_selected", page, select_across="1")
    assert "Are you sure you want to delete" in asked.content.decode()
    done = confirm(admin_client, url, asked)
    assert "Deleted 5,000 jobs in 10 batches." in " ".join(shown_messages(done))
    assert not Job.objects.filter(status="cancelled").exists()
    assert Job.objects.count() == MANY + 1 + 10
    assert history(Job, DELETION).count() == MANY


def test_requeue_and_delete_all_matching_dead_letters(admin_client, run_worker):
    letters = [make_dead_letter(run_worker, index) for index in range(3)]
    DeadLetter.objects.bulk_create(
        DeadLetter(
            job_id=f"bulk-{index}",
            name=add.name,
            queue="default",
            args=[index, 1],
            max_attempts=1,
            result_ttl=60,
            attempts=1,
            error="PartnerError: 503",
            enqueued_at=timezone.now(),
        )
        for index in range(1200)
    )
    url = f"{LETTERS}?q=PartnerError"
    asked = post(admin_client, url, "requeue_selected", [letters[0].pk], select_across="1")
    assert "1,200 dead letters" in asked.content.decode()
    done = confirm(admin_client, url, asked)
    assert "Requeued 1,200 dead letters in 3 batches." in " ".join(shown_messages(done))
    assert Job.objects.filter(job_id__startswith="bulk-", status="queued").count() == 1200
    assert DeadLetter.objects.count() == 3
    asked = post(admin_client, LETTERS, "delete_selected", [letters[0].pk], select_across="1")
    done = confirm(admin_client, LETTERS, asked)
    assert "Deleted 3 dead letters." in " ".join(shown_messages(done))
    assert history(DeadLetter, CHANGE).count() == 1200
    assert history(DeadLetter, DELETION).count() == 3


def test_an_empty_match_and_a_stale_selection_change_nothing_and_say_so(admin_client):
    handle = add.enqueue(1, 1)
    job = Job.objects.get(job_id=handle.id)
    url = f"{JOBS}?status__exact=failed"
    response = post(admin_client, url, "cancel_selected", [job.pk], select_across="1")
    assert "No job matches: nothing was changed." in shown_messages(response)
    Job.objects.filter(pk=job.pk).delete()  # gone before the click
    response = post(admin_client, JOBS, "cancel_selected", [job.pk])
    assert "1 job had already been requeued or deleted by someone else" in " ".join(
        shown_messages(response)
    )
    response = post(admin_client, JOBS, "run_again_selected", [], select_across="0")
    assert "Items must be selected" in " ".join(shown_messages(response))
    assert not history(Job).exists()


def test_batches_are_bounded(admin_client, monkeypatch):
    monkeypatch.setattr(bulk, "BATCH", 3)
    add.enqueue_many([(index, 1) for index in range(7)])
    pks = list(Job.objects.values_list("pk", flat=True))
    done = post(admin_client, JOBS, "cancel_selected", pks)
    assert "Cancelled 7 jobs in 3 batches." in " ".join(shown_messages(done))


def test_view_only_staff_get_no_console_actions(client):
    client.force_login(staff("view_job", "view_deadletter"))
    assert client.get(JOBS).context["action_form"] is None
    handle = add.enqueue(1, 1)
    pk = Job.objects.get(job_id=handle.id).pk
    post(client, JOBS, "run_again_selected", [pk])
    post(client, JOBS, "delete_selected", [pk], post="yes")
    assert Job.objects.count() == 1 and not history(Job).exists()
    client.force_login(staff("view_job", "change_job", username="operator"))
    choices = dict(client.get(JOBS).context["action_form"].fields["action"].choices)
    assert {"cancel_selected", "retry_now_selected", "run_again_selected"} <= set(choices)
    assert "delete_selected" not in choices


# -- search -----------------------------------------------------------------------------------


def listed(client: Client, url: str, term: str) -> set[str]:
    response = client.get(url, {"q": term})
    return {row.job_id for row in response.context["cl"].result_list}


def test_search_by_id_name_arguments_metadata_and_error(admin_client, run_worker, monkeypatch):
    first = add.using(job_id="old-one").enqueue(1, 1)
    monkeypatch.setattr(search, "SEARCH_WINDOW", 5)
    add.enqueue_many([(index, 0) for index in range(5)])
    tagged = add.using(metadata={"tenant": "Acme-Corp"}).enqueue(31337, 1)
    letter = make_dead_letter(run_worker, "card-4242")
    failed = Job.objects.get(job_id=letter.job_id)
    assert listed(admin_client, JOBS, "old-one") == {first.id}, "an id: any age"
    assert listed(admin_client, JOBS, "31337") == {tagged.id}
    assert listed(admin_client, JOBS, "acme-corp") == {tagged.id}, "metadata, any case"
    assert listed(admin_client, JOBS, "card-4242") == {failed.job_id}, "arguments"
    assert listed(admin_client, JOBS, "RuntimeError: card") == {failed.job_id}, "the error"
    assert listed(admin_client, LETTERS, "runtimeerror: CARD") == {letter.job_id}
    assert listed(admin_client, JOBS, "old-") == set(), "text: only the newest rows"
    assert listed(admin_client, JOBS, "always_fails") == {failed.job_id}, "the name"


def test_a_batch_costs_the_same_statements_for_few_rows_or_many(admin_client, run_worker):
    """Run again and delete read, write and log a batch in a fixed number of statements
    (one history INSERT per batch, not one per row)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements(action: str, count: int) -> int:
        handles = add.enqueue_many([(index, 1) for index in range(count)])
        Job.objects.filter(job_id__in=[h.id for h in handles]).update(status="completed")
        pks = list(Job.objects.filter(status="completed").values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as queries:
            post(admin_client, JOBS, action, pks, post="yes")
        Job.objects.all().delete()
        return len(queries)

    statements("run_again_selected", 1)  # warm: the content type is cached after one use
    assert statements("run_again_selected", 5) == statements("run_again_selected", 60)
    assert statements("delete_selected", 5) == statements("delete_selected", 60)


@pytest.mark.django_db(transaction=True)
def test_a_batch_takes_sqlites_write_lock_before_it_reads(admin_client, run_worker):
    """SQLite: a batch that read its rows, then met another connection's commit (a worker's
    heartbeat), could not take the write lock any more and failed with "database is locked";
    it takes the lock first, so the other writer waits for it (or gives up, as here)."""
    import sqlite3

    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's busy-snapshot behaviour")
    letter = make_dead_letter(run_worker, "boom")
    path = connection.settings_dict["NAME"]
    tried: list[str] = []

    def another_writer_commits_after_the_first_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        first_read = sql.lstrip().upper().startswith("SELECT") and "deadletter" in sql
        if not tried and first_read and context["connection"].in_atomic_block:  # the batch
            other = sqlite3.connect(path, timeout=0.2)
            try:
                other.execute("INSERT INTO testapp_execution (tag, pid, at) VALUES ('x', 0, 'x')")
                other.commit()
                tried.append("committed")
            except sqlite3.OperationalError:  # the batch holds the write lock already
                tried.append("waited")
            finally:
                other.close()
        return result

    with connection.execute_wrapper(another_writer_commits_after_the_first_read):
        response = post(admin_client, LETTERS, "requeue_selected", [letter.pk])
    assert tried == ["waited"]
    assert "Requeued 1 dead letter" in " ".join(shown_messages(response))
    assert get_job(letter.job_id).status == "queued"
