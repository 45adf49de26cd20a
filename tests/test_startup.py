"""What a worker process does before its first claim: the imports it makes, the checks it
runs, the migrations it reads. Counted, never timed (the figures are in bench/peers.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from io import StringIO

import pytest
from django.core.checks import Error, registry
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from django_jobqueue import checks
from django_jobqueue.management.commands import runjobworker
from tests.conftest import ROOT

#: Imported on first use, never by setting Django up and importing the worker's entry point:
#: the optional extras (metrics, tracing), croniter (schedules only), the views and consumers
#: of web processes, and the migration executor (read only when a migration is missing).
DEFERRED = [
    "prometheus_client",
    "opentelemetry",
    "croniter",
    "django_jobqueue.consumers",
    "django_jobqueue.metrics",
    "django_jobqueue.views",
    "django.db.migrations.executor",
]

_CHILD = """
import json, sys
import django
django.setup()
from django_jobqueue.management.commands.runjobworker import Command
from django_jobqueue.worker import Worker
print(json.dumps([name for name in sys.argv[1:] if name in sys.modules]))
"""


def test_the_worker_entry_point_imports_nothing_it_does_not_use_at_start():
    """A fresh process sets Django up with the test settings (whose jobs modules import
    ``django_jobqueue``) and imports ``runjobworker`` and ``Worker``: none of ``DEFERRED`` is
    loaded. Each of them was, before they were deferred (telemetry and cron imported their
    extras at module level, the command its migration executor)."""
    missing = [name for name in ("prometheus_client", "opentelemetry") if not _installed(name)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: nothing to defer")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *DEFERRED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture
def failing_urls_check():
    """A check of another tag (``urls``) that always fails, registered for one test."""

    def urls_are_broken(app_configs=None, **kwargs):
        return [Error("the URLconf is broken", id="tests.E001")]

    registry.registry.register(urls_are_broken, "urls")
    try:
        yield
    finally:
        registry.registry.registered_checks.discard(urls_are_broken)


@pytest.mark.django_db
def test_runjobworker_runs_this_apps_checks_not_the_whole_projects(failing_urls_check, settings):
    """The worker runs the checks tagged ``django_jobqueue`` (what it uses: its settings,
    schedules, channel layer, limits, database), not a URL check that fails; ``manage.py
    check`` still runs that one."""
    assert runjobworker.Command.requires_system_checks == [checks.TAG]
    call_command("runjobworker", "--burst", skip_checks=False, stdout=StringIO())
    with pytest.raises(SystemCheckError, match=r"tests\.E001"):
        call_command("check")
    settings.JOBQUEUE = {**settings.JOBQUEUE, "POLL_INTERVAL": -1}
    with pytest.raises(SystemCheckError, match=r"django_jobqueue\.E005"):
        call_command("runjobworker", "--burst", skip_checks=False, stdout=StringIO())


@pytest.mark.django_db
def test_a_migrated_database_is_recognised_in_one_query(django_assert_num_queries):
    """Every migration of the app recorded: one query, no migration module loaded."""
    with django_assert_num_queries(1):
        assert runjobworker._all_recorded(connection.alias)
    runjobworker._require_migrated(connection.alias)


@pytest.mark.django_db
def test_a_migration_not_recorded_sends_the_check_to_the_full_plan():
    """One migration of the app not recorded as applied: the quick answer is no, and the
    full plan names the migration and says to run ``migrate``."""
    recorded = MigrationRecorder.Migration.objects.filter(app="django_jobqueue")
    last = recorded.order_by("-name").first()
    assert last is not None
    last.delete()
    assert not runjobworker._all_recorded(connection.alias)
    with pytest.raises(CommandError, match=f"django_jobqueue.{last.name}.*migrate"):
        runjobworker._require_migrated(connection.alias)
