"""The quickstart's own setup, as a new project has it: ``startproject``'s settings plus the
quickstart's lines (a file SQLite database, no ``CHANNEL_LAYERS``, no ``JOBQUEUE``), run in
a subprocess. The suite's own settings use the in-memory layer, which hides what only this
setup shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.subprocess

#: Seconds: the whole ``manage.py test`` / pytest run, startup included.
RUN_TIMEOUT = 120
#: Seconds an eager ``enqueue_and_wait()`` may take: "at once", far under WAIT_TIMEOUT (30).
AT_ONCE = 2.0

JOBS = """\
import time

from django_jobqueue import job


@job
def add(x, y):
    return x + y


@job
def slow_add(x, y):
    time.sleep(0.6)  # longer than a safety-net interval without a layer (POLL_INTERVAL / 4)
    return x + y
"""

# docs/guide/testing.md, "TestCase", timed.
TESTCASE = """\
import time

from django.test import TestCase, override_settings

from myapp.jobs import add, slow_add


class JobTests(TestCase):
    @override_settings(JOBQUEUE={"EAGER": True})
    def test_enqueue_and_wait(self):
        started = time.monotonic()
        self.assertEqual(add.enqueue_and_wait(2, 3), 5)
        print(f"eager wait took {time.monotonic() - started:.3f}s")

    @override_settings(JOBQUEUE={"EAGER": True})
    def test_a_slow_job(self):
        started = time.monotonic()
        self.assertEqual(slow_add.enqueue_and_wait(2, 3), 5)
        print(f"slow eager wait took {time.monotonic() - started - 0.6:.3f}s more than its job")
"""

# docs/guide/testing.md, "pytest-django", timed.
PYTEST = """\
import time

import pytest

from myapp.jobs import add


@pytest.fixture
def eager_jobs(settings):
    settings.JOBQUEUE = {**getattr(settings, "JOBQUEUE", {}), "EAGER": True}


@pytest.mark.django_db
def test_enqueue_and_wait(eager_jobs):
    started = time.monotonic()
    assert add.enqueue_and_wait(2, 3) == 5
    print(f"eager wait took {time.monotonic() - started:.3f}s")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh ``startproject`` with the quickstart's app and settings lines."""
    env = _env(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "django", "startproject", "mysite", str(tmp_path)],
        env=env,
        check=True,
        timeout=RUN_TIMEOUT,
    )
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "jobs.py").write_text(JOBS)
    (app / "tests.py").write_text(TESTCASE)
    (app / "test_pytest.py").write_text(PYTEST)
    settings = tmp_path / "mysite" / "settings.py"
    text = settings.read_text()
    assert "CHANNEL_LAYERS" not in text and "JOBQUEUE" not in text
    assert "db.sqlite3" in text  # startproject's file SQLite database
    settings.write_text(text + '\nINSTALLED_APPS += ["django_jobqueue", "myapp"]\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n")
    return tmp_path


def _env(project: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT)])
    return env


def _run(project: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def _assert_at_once(output: str) -> None:
    took = re.findall(r"eager wait took ([0-9.]+)s", output)
    assert took and all(float(seconds) < AT_ONCE for seconds in took), output
    assert "safety-net" not in output, output
    assert "locked" not in output, output


def test_eager_enqueue_and_wait_in_a_django_testcase_returns_at_once(project: Path) -> None:
    _assert_at_once(_run(project, "manage.py", "test", "myapp.tests", "-v", "2"))


def test_eager_enqueue_and_wait_under_pytest_django_returns_at_once(project: Path) -> None:
    _assert_at_once(
        _run(project, "-m", "pytest", "-s", "-p", "no:cacheprovider", "myapp/test_pytest.py")
    )
