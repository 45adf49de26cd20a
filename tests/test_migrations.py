"""Migrations that must be cheap on a large, busy job table."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from django_jobqueue.models import Job
from tests.conftest import requires_postgres

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = ("django_jobqueue", "0001_initial")
AFTER = ("django_jobqueue", "0002_job_id_constraint_result_without_fk")


def _migrate(target: tuple[str, str] | None = None) -> None:
    """Migrate the app to ``target``; None: its latest migration."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    if target is None:
        (target,) = executor.loader.graph.leaf_nodes("django_jobqueue")
    executor.migrate([target])


def _job_id_indexes() -> dict[str, tuple[int, str]]:
    """Name -> (oid, definition) of the indexes on job_id."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.oid, pg_get_indexdef(c.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND pg_get_indexdef(c.oid) LIKE %s",
            [Job._meta.db_table, "%(job_id%"],
        )
        return {name: (oid, definition) for name, oid, definition in cursor.fetchall()}


@requires_postgres
def test_0002_renames_the_unique_index_on_postgresql_instead_of_building_a_new_one():
    try:
        _migrate(BEFORE)
        before = _job_id_indexes()
        unique = [oid for oid, definition in before.values() if "UNIQUE" in definition]
        assert len(before) == 2 and len(unique) == 1  # the unique one and the LIKE one
        _migrate(AFTER)
        after = _job_id_indexes()
        # The same index, renamed (a rebuild would hold an exclusive lock while it runs);
        # the varchar_pattern_ops index is gone.
        assert after == {"djq_job_id": (unique[0], after["djq_job_id"][1])}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT contype FROM pg_constraint WHERE conname = 'djq_job_id' "
                "AND conrelid = %s::regclass",
                [Job._meta.db_table],
            )
            assert cursor.fetchall() == [("u",)]
    finally:
        _migrate()


def test_0002_round_trips_and_keeps_job_ids_unique():
    try:
        _migrate(BEFORE)
        _migrate(AFTER)
    finally:
        _migrate()
    from tests.testapp.jobs import add

    first = add.using(job_id="unique-after-0002").enqueue(1, 2)
    again = add.using(job_id="unique-after-0002").enqueue(1, 2)
    assert (first.created, again.created) == (True, False)
    assert Job.objects.filter(job_id="unique-after-0002").count() == 1


def test_0003_adds_the_controls_and_round_trips():
    try:
        _migrate(AFTER)
        _migrate(("django_jobqueue", "0003_controls"))
        _migrate(AFTER)
    finally:
        _migrate()
    from tests.testapp.jobs import add

    handle = add.enqueue(1, 2)
    row = Job.objects.get(job_id=handle.id)
    assert (row.cancel_requested, row.progress, row.time_limit, row.limit_key) == (
        False,
        None,
        None,
        None,
    )
