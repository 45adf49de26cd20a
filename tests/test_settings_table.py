"""The table of ``JOBQUEUE`` keys (``conf.Settings``): the typed values read from it, the
checks that judge the project's values by it, and what a process does with a value that
cannot work."""

from __future__ import annotations

import math
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from django_jobqueue import conf
from django_jobqueue.checks import FAULT_IDS, check_settings
from django_jobqueue.conf import Fault, Key
from tests.testapp.jobs import add

JUDGED = {name: key for name, key in conf.KEYS.items() if key.kind is not object}


def _wrong_type(key: Key[Any]) -> Any:
    return 5 if key.kind is str else ("yes" if key.kind is bool else "5")


def _faulty_values() -> list[tuple[str, Any, Fault]]:
    """For every key: a value of the wrong type, and each bound crossed, from the table."""
    cases = []
    for name, key in JUDGED.items():
        cases.append((name, _wrong_type(key), Fault.TYPE))
        if key.minimum is not None:
            cases.append((name, key.kind(key.minimum - (0 if key.above else 1)), Fault.MINIMUM))
        if key.maximum is not None:
            cases.append((name, key.kind(key.maximum * 2), Fault.MAXIMUM))
        if key.kind in (int, float):
            cases.append((name, math.nan, Fault.FINITE))
        if key.form is not None:
            cases.append((name, "not a name!", Fault.FORM))
    return cases


FAULTY = _faulty_values()


def test_every_default_is_valid_and_of_its_type(settings):
    settings.JOBQUEUE = dict(conf.DEFAULTS)
    assert check_settings() == []
    for name, key in JUDGED.items():
        value = getattr(conf.settings, name)
        assert key.fault(value) is None, name
        assert value is None or type(value) is key.kind, name


def test_the_class_holds_the_table_and_the_instance_the_values(settings):
    settings.JOBQUEUE = {"TIME_LIMIT": 30}
    assert conf.Settings.TIME_LIMIT is conf.KEYS["TIME_LIMIT"]
    assert conf.Settings.TIME_LIMIT.name == "TIME_LIMIT" and conf.settings.TIME_LIMIT == 30.0


def test_a_number_is_read_as_a_float(settings):
    settings.JOBQUEUE = {"LEASE_SECONDS": 20, "TIME_LIMIT": 5, "MAX_ATTEMPTS": 4}
    assert (conf.settings.LEASE_SECONDS, conf.settings.TIME_LIMIT) == (20.0, 5.0)
    assert type(conf.settings.LEASE_SECONDS) is float and type(conf.settings.TIME_LIMIT) is float
    assert type(conf.settings.MAX_ATTEMPTS) is int
    assert conf.get("LEASE_SECONDS") == 20.0  # the old accessor, over the same values


@pytest.mark.parametrize(("name", "value", "fault"), FAULTY, ids=lambda v: str(v))
def test_each_fault_has_its_own_id(settings, name, value, fault):
    settings.JOBQUEUE = {name: value}
    messages = check_settings()
    assert [(m.id, bool(m.hint)) for m in messages] == [(FAULT_IDS[fault], True)]
    assert f"JOBQUEUE[{name!r}]" in messages[0].msg


@pytest.mark.parametrize(("name", "value", "fault"), FAULTY, ids=lambda v: str(v))
def test_a_process_never_runs_with_a_value_that_cannot_work(settings, caplog, name, value, fault):
    settings.JOBQUEUE = {name: value}
    assert getattr(conf.settings, name) == conf.KEYS[name].default
    assert f"JOBQUEUE[{name!r}] is {value!r}, which cannot work" in caplog.text


def test_the_ids_are_one_per_fault():
    assert len(set(FAULT_IDS.values())) == len(Fault) == len(FAULT_IDS)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("jobqueue", "expected"),
    [
        (["not", "a", "dict"], "E001"),
        ({"LEASE_SECS": 30}, "E003"),
        ({"TIME_LIMIT": "abc"}, "E004"),
        ({"TIME_LIMIT": -5}, "E005"),
        ({"DEFAULT_QUEUE": "a b"}, "E006"),
        ({"POLL_INTERVAL": math.inf}, "E010"),
        ({"TIME_LIMIT": 10**9}, "E011"),
        ({"LEASE_SECONDS": 10, "HEARTBEAT_INTERVAL": 6}, "E012"),
    ],
)
def test_manage_py_check_reports_each_id(settings, jobqueue, expected):
    settings.JOBQUEUE = jobqueue
    with pytest.raises(SystemCheckError) as info:
        call_command("check", stdout=StringIO(), stderr=StringIO())
    assert f"django_jobqueue.{expected}" in str(info.value)
    assert "HINT:" in str(info.value)


def test_a_jobqueue_that_is_not_a_dict_runs_with_the_defaults(settings, caplog):
    settings.JOBQUEUE = ["MAX_ATTEMPTS", 5]
    assert conf.settings.MAX_ATTEMPTS == 3
    assert "The JOBQUEUE setting is a list, not a dict" in caplog.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("time_limit", [-5, 0, "abc"])
def test_a_time_limit_that_cannot_work_never_reaches_the_worker(settings, run_worker, time_limit):
    """Defect: with TIME_LIMIT -5 every job without a limit of its own was dead-lettered
    "ran longer than its time_limit of -5s"."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "TIME_LIMIT": time_limit}
    handle = add.using(max_attempts=1).enqueue(2, 3)
    run_worker()
    assert (handle.refresh().status, handle.result) == ("completed", 5)
