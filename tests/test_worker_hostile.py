"""What a job gives back that the database could not store fails that attempt cleanly."""

from __future__ import annotations

import pytest

from django_jobqueue.models import DeadLetter
from tests.testapp.jobs import add, open_missing_file, returns_bytes

pytestmark = pytest.mark.django_db


def test_an_error_with_a_lone_surrogate_is_stored_and_blamed_correctly(run_worker):
    handle = open_missing_file.enqueue("report")
    ordinary = add.enqueue(1, 2)
    run_worker()
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert letter.error.startswith("FileNotFoundError")  # not "Lease expired"
    assert "\\udcff" in letter.error
    assert handle.refresh().status == "failed" and "FileNotFoundError" in handle.error
    assert ordinary.refresh().result == 3


def test_a_result_over_max_result_bytes_fails_its_attempt(run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "MAX_RESULT_BYTES": 4096}
    too_big = returns_bytes.enqueue(10_000)
    fits = returns_bytes.enqueue(100)
    run_worker()
    assert too_big.refresh().status == "failed"
    assert "MAX_RESULT_BYTES" in too_big.error
    assert fits.refresh().result == "x" * 100


def test_a_huge_error_is_cut_to_max_error_bytes(run_worker, settings):
    settings.JOBQUEUE = {**settings.JOBQUEUE, "MAX_ERROR_BYTES": 2048}
    from tests.testapp.jobs import always_fails

    handle = always_fails.using(max_attempts=1).enqueue("e" * 100_000)
    run_worker()
    letter = DeadLetter.objects.get(job_id=handle.id)
    assert len(letter.error.encode()) <= 2048 and len(letter.traceback.encode()) <= 2048
    assert letter.error.startswith("RuntimeError: eee")


@pytest.mark.django_db(transaction=True)  # the worker closes its connection to reconnect
def test_a_write_the_database_refuses_twice_fails_its_attempt_instead_of_wedging(
    run_worker, caplog
):
    """PostgreSQL closes the connection on a statement it cannot take (over 1 GB): the
    worker took that for a lost database and sent the same statement again, for ever. The
    second identical failure while the database answers is a refusal: the completion fails
    its attempt and the worker goes on."""
    from django.db import OperationalError, connection

    from django_jobqueue.querysets import _DONE_STATUS

    def refuse_completions(execute, sql, params, many, context):
        if _DONE_STATUS in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    handle = returns_bytes.enqueue(10)
    ordinary_failure = open_missing_file.enqueue("x")
    with connection.execute_wrapper(refuse_completions):
        run_worker()
    assert handle.refresh().status == "failed"
    assert "could not be stored: OperationalError" in handle.error
    assert ordinary_failure.refresh().status == "failed"
    assert "refused the same write twice" in caplog.text


def test_completions_are_split_by_result_size(run_worker, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_jobqueue.base import ClaimedJob
    from django_jobqueue.querysets import _DONE_STATUS
    from django_jobqueue.worker import writer
    from django_jobqueue.worker.outcomes import Outcome

    def outcome(pk, ttl, size):
        job = ClaimedJob(pk, str(pk), "n", "q", [], {}, 1, 3, ttl, 0, None)
        return Outcome(job, True, 0.0, result="r", size=size)

    monkeypatch.setattr(writer, "WRITE_BATCH_BYTES", 25_000)
    batches = writer._by_size(
        {
            60: [outcome(1, 60, 10_000), outcome(2, 60, 10_000), outcome(3, 60, 10_000)],
            5: [outcome(4, 5, 30_000), outcome(5, 5, 1)],
        }
    )
    assert [[o.job.id for o in batch] for batch in batches] == [[1, 2], [3], [4], [5]]

    handles = returns_bytes.enqueue_many([(10_000,)] * 6)
    with CaptureQueriesContext(connection) as queries:
        run_worker(concurrency=6)
    assert all(h.refresh().result == "x" * 10_000 for h in handles)
    completions = [q["sql"] for q in queries.captured_queries if _DONE_STATUS in q["sql"]]
    assert completions and all(sql.count("x" * 10_000) <= 2 for sql in completions)
