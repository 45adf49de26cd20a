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
