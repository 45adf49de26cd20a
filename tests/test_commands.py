"""``manage.py runjobworker``: arguments, help, errors, and the settings module."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import ROOT
from tests.testapp.jobs import add


def _help() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "django", "runjobworker", "--help"],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


def test_help_lists_every_option_with_defaults():
    text = _help()
    for option in ("--queue", "--concurrency", "--burst", "--name"):
        assert option in text
    assert "(default: 1)" in text
    assert "SIGTERM" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "between 1 and 512"),
        (["--concurrency", "many"], "not a whole number"),
        (["--queue", "bad queue"], "not a valid queue name"),
    ],
)
def test_bad_arguments_are_command_errors(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("runjobworker", *args)


@pytest.mark.django_db
def test_burst_runs_the_queue_and_returns():
    handle = add.enqueue(1, 2)
    call_command("runjobworker", "--burst", "--queue", "default", stdout=StringIO())
    assert handle.refresh().result == 3
