"""A job's exception that cannot describe itself still ends the job as a failure.

An ``__str__`` that raises, a ``repr`` that raises, a ``__cause__`` or ``__notes__`` that
raise, a context chain that never ends: recording the ending must not depend on them. Before,
the worker's ``describe()`` raised on the way to recording the failure: the job stayed
"running" with its lease renewed for ever, its slot was lost, ``--burst`` never exited.
"""

from __future__ import annotations

import signal

import pytest

from django_jobqueue.base import ClaimedJob
from django_jobqueue.models import DeadLetter, Job
from django_jobqueue.worker.outcomes import describe, failed
from tests.conftest import wait_until
from tests.testapp.jobs import (
    HOSTILE_ERRORS,
    _raise_hostile,
    add,
    async_raises_hostile,
    raises_hostile,
)

pytestmark = pytest.mark.subprocess

KINDS = sorted(HOSTILE_ERRORS)


@pytest.mark.parametrize("kind", KINDS)
def test_describe_and_failed_never_raise_and_name_the_class(kind):
    job = ClaimedJob(1, "hostile", "n", "q", [], {}, 1, 3, 60, 0, None)
    try:
        _raise_hostile(kind)
    except Exception as exc:
        error = describe(exc)
        outcome = failed(job, 0.0, error)
    name = HOSTILE_ERRORS[kind].__name__
    assert error.startswith(name)
    assert outcome.error == error and not outcome.ok
    assert outcome.traceback.startswith("Traceback") and "_raise_hostile" in outcome.traceback
    assert outcome.exception_path == f"tests.testapp.jobs.{name}"


def test_what_str_raised_is_described_in_turn():
    try:
        _raise_hostile("str")
    except Exception as exc:
        assert describe(exc) == (
            "_StrRaises: <str() raised AttributeError: '_StrRaises' object has no attribute "
            "'status'>"
        )
    try:
        _raise_hostile("repr")
    except Exception as exc:
        assert describe(exc) == "_ReprRaises: <str() raised SystemExit: not from str either>"


def test_an_endless_chain_is_cut():
    from django_jobqueue.worker.outcomes import MAX_CHAIN, format_traceback

    class Chained(Exception):
        pass

    error: BaseException = Chained(0)
    for number in range(1, 3 * MAX_CHAIN):
        following = Chained(number)
        following.__cause__ = error
        error = following
    told = format_traceback(error)
    assert told.count("Chained: ") == MAX_CHAIN + 1  # the last one told, then the cut
    assert f"cut at {MAX_CHAIN}" in told and told.rstrip().endswith(f"Chained: {error}")


@pytest.mark.django_db(transaction=True)
def test_a_worker_records_every_such_failure_and_keeps_serving(worker_processes):
    """More such jobs than the default concurrency (8 on 2 cores), sync and async: each ends
    failed with a dead letter; the worker goes on, ``--burst`` exits, SIGTERM finishes."""

    def hostile_batch() -> list[str]:
        sync = [raises_hostile.enqueue(kind).id for kind in KINDS * 2]
        return sync + [async_raises_hostile.enqueue(kind).id for kind in KINDS]

    def all_dead_lettered(ids: list[str]) -> bool:
        return DeadLetter.objects.filter(job_id__in=ids).count() == len(ids)

    first = hostile_batch()
    assert len(first) > 8
    burst = worker_processes.start("--burst")
    assert burst.wait(60) == 0, worker_processes.log(burst)
    assert all_dead_lettered(first), worker_processes.log(burst)
    assert set(Job.objects.filter(job_id__in=first).values_list("status", flat=True)) == {"failed"}
    for letter in DeadLetter.objects.filter(job_id__in=first):
        assert letter.error.split(":")[0] in {cls.__name__ for cls in HOSTILE_ERRORS.values()}
        assert letter.traceback.startswith("Traceback"), letter.traceback

    serving = worker_processes.start()
    second = hostile_batch()
    wait_until(lambda: all_dead_lettered(second), timeout=60)
    after = add.enqueue(2, 3)
    wait_until(lambda: after.refresh().status == "completed", timeout=30)
    serving.send_signal(signal.SIGTERM)
    assert serving.wait(30) == 0, worker_processes.log(serving)
