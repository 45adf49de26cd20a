"""The worker's hot path, pinned: statements and commits per job, per database vendor.

A new statement or commit on the path every job takes changes these numbers and fails a
test; speed itself is measured by ``bench/run.py``, never asserted here."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_jobqueue.models import Job, QueuePause, WorkerHeartbeat
from django_jobqueue.worker import Worker
from tests.conftest import requires_postgres
from tests.testapp.jobs import add, noop


@pytest.mark.django_db(transaction=True)
def test_queries_per_job_stay_bounded(settings):
    """Claim + completion cost at most two statements per job (fewer when batched)."""
    count = 50
    noop.enqueue_many([()] * count)
    worker = Worker(burst=True, concurrency=2)
    with CaptureQueriesContext(connection) as queries:
        worker.run()
    assert worker.processed == count
    # Transaction control, and the once-per-connection setup (synchronous_commit, ANALYZE
    # of a never-analyzed table) are not per job.
    control = (
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "SET ",
        "SELECT reltuples",
        "ANALYZE",
    )
    # Upkeep on timers, not per job: the worker's heartbeat row (counted exactly in the test
    # below), the look at the pauses of the queues it holds jobs of (at most once a second),
    # and the look for reruns asked for while a job ran (with the reap).
    timers = (
        connection.ops.quote_name(WorkerHeartbeat._meta.db_table),
        connection.ops.quote_name(QueuePause._meta.db_table),
        '"rerun" IS NOT NULL',
    )
    statements = [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].startswith(control) and not any(t in q["sql"] for t in timers)
    ]
    per_job = [s for s in statements if "RETURNING" in s]
    assert len(per_job) <= 2 * count, statements
    # Beyond claims and completions: at most a lease renewal, a reap and a prune query,
    # plus the final empty claim.
    assert len(statements) - len(per_job) <= 4, statements


#: Statements of the hot path per vendor (transaction control aside: see COMMITS), for one
#: job that returns None (a completion without a result row) and one that returns a value,
#: and once per burst run (the final, empty claim; the first prune; the look for retries
#: backing off). SQLite stores a result in a second statement of the completion's
#: transaction; PostgreSQL claims, and completes with a result, in one statement each.
STATEMENTS = {
    "sqlite": {"no result": 1 + 1, "result": 1 + 2, "per run": 1 + 1 + 1},
    "postgresql": {"no result": 1 + 1, "result": 1 + 1, "per run": 1 + 1 + 1},
}
#: Commits per job: on the lease path a claim and a completion; on the short path
#: (PostgreSQL, a name after MIN_RUNS short runs) one for both. Per run: the final empty
#: claim, the prune, the look for retries (each its own transaction).
COMMITS = {
    "sqlite": {"lease path": 2, "short path": 2, "per run": 3},
    "postgresql": {"lease path": 2, "short path": 1, "per run": 3},
}
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _commits(sqls: list[str]) -> int:
    """Transactions committed by the statements ``sqls`` (as captured): each COMMIT, and
    each statement run outside BEGIN ... COMMIT (autocommit)."""
    commits, open_ = 0, False
    for sql in sqls:
        if sql.startswith("BEGIN"):
            open_ = True
        elif sql.startswith(("COMMIT", "ROLLBACK")):
            commits += sql.startswith("COMMIT")
            open_ = False
        elif not open_ and not sql.startswith(("SAVEPOINT", "RELEASE")):
            commits += 1
    return commits


def _hot_path(sqls: list[str]) -> tuple[list[str], list[str]]:
    """The per-job statements among ``sqls`` (timer upkeep and the heartbeat row set aside,
    checked), with and without transaction control."""
    setup = ("SET synchronous_commit", "SELECT reltuples", "ANALYZE")  # once per connection
    statements = [sql for sql in sqls if not sql.startswith(setup)]
    table = connection.ops.quote_name(Job._meta.db_table)
    # Upkeep on timers: the reap on the first pass (again after 5s of a slow run), a lease
    # renewal only after HEARTBEAT_INTERVAL (20s here).
    # With the reap, the look for pending reruns (on_duplicate="rerun"), one read.
    reap = f"ORDER BY {table}.{connection.ops.quote_name('lease_expires_at')}"
    rerun = f"{table}.{connection.ops.quote_name('rerun')} IS NOT NULL"
    reaps = [s for s in statements if reap in s or rerun in s]
    renewals = [s for s in statements if s.startswith(f"UPDATE {table} SET lease_expires_at")]
    assert reaps, statements
    # The heartbeat row: written on the first pass, deleted at exit, never per job.
    heartbeats = connection.ops.quote_name(WorkerHeartbeat._meta.db_table)
    rows = [s for s in statements if heartbeats in s]
    assert [s.split()[0] for s in rows] == ["INSERT", "DELETE"], rows
    hot = [s for s in statements if s not in reaps and s not in renewals and s not in rows]
    return hot, [s for s in hot if not s.startswith(TRANSACTION_CONTROL)]


@pytest.mark.django_db(transaction=True)
def test_statements_and_commits_per_job_are_pinned_per_vendor(settings):
    """A new statement or commit on the hot path changes these numbers: one claim and one
    completion per job, one commit for both on PostgreSQL's short path (PREFETCH 0 and one
    slot keep claims and completions unbatched, so the count does not depend on timing; a
    50 ms bound keeps every no-op run short on a loaded machine)."""
    from django_jobqueue.worker.shortpath import MIN_RUNS

    if connection.vendor not in STATEMENTS:
        pytest.skip(f"no statement counts for {connection.vendor}")
    settings.JOBQUEUE = {
        **settings.JOBQUEUE,
        "PREFETCH": 0,
        "LEASE_SECONDS": 60,
        "SHORT_JOB_SECONDS": 0.05,
    }
    count = 20
    noop.enqueue_many([()] * count)
    add.enqueue_many([(1, 2)] * count)
    worker = Worker(burst=True, concurrency=1)
    with CaptureQueriesContext(connection) as queries:
        worker.run()
    assert worker.processed == 2 * count
    hot, statements = _hot_path([q["sql"] for q in queries.captured_queries])
    expected = STATEMENTS[connection.vendor]
    assert (
        len(statements)
        == count * (expected["no result"] + expected["result"]) + expected["per run"]
    ), "\n".join(hot)
    commits = COMMITS[connection.vendor]
    lease = 2 * MIN_RUNS  # each name's first runs take the lease path
    assert _commits(hot) == (
        lease * commits["lease path"]
        + (2 * count - lease) * commits["short path"]
        + commits["per run"]
    ), "\n".join(hot)
    assert worker._short.jobs == (2 * count - lease if connection.vendor == "postgresql" else 0)


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_drain_with_the_defaults_costs_a_fraction_of_a_statement_per_job(settings):
    """With the default prefetch, the short path claims a batch and completes it in one
    transaction: claims, completions and commits are shared by many jobs."""
    settings.JOBQUEUE = {**settings.JOBQUEUE, "LEASE_SECONDS": 60, "SHORT_JOB_SECONDS": 0.05}
    count = 300
    noop.enqueue_many([()] * count)
    worker = Worker(burst=True)
    with CaptureQueriesContext(connection) as queries:
        worker.run()
    assert worker.processed == count
    hot, statements = _hot_path([q["sql"] for q in queries.captured_queries])
    # The first runs (no duration known yet: no prefetch, one job per slot) cost up to two
    # statements and two commits each; then a window per batch of concurrency + PREFETCH.
    assert len(statements) <= count / 4, "\n".join(hot)
    assert _commits(hot) <= count / 8, "\n".join(hot)


#: What one ``enqueue()`` costs the producer, on every vendor: one INSERT (``ON CONFLICT
#: DO NOTHING RETURNING``), committed on its own in autocommit, joining the caller's
#: transaction inside ``atomic()``; ``enqueue_many`` one statement per batch.
ENQUEUE = {"statements": 1, "commits": 1}


@pytest.mark.django_db(transaction=True)
def test_one_enqueue_costs_one_statement_and_one_commit():
    """The producer's side of every job and of every round trip: a new statement or commit
    on enqueue's path (a look-up, a second write, a transaction around the INSERT) fails
    here, whatever the machine's speed."""
    noop.enqueue()  # the connection's first use (its setup is not per call)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            noop.enqueue()
        add.using(priority=3).enqueue(1, 2)
    sqls = [q["sql"] for q in queries.captured_queries]
    assert len(sqls) == 6 * ENQUEUE["statements"], sqls
    assert all(sql.startswith("INSERT") and "ON CONFLICT" in sql for sql in sqls), sqls
    assert _commits(sqls) == 6 * ENQUEUE["commits"], sqls
    assert Job.objects.count() == 7


@pytest.mark.django_db(transaction=True)
def test_enqueue_inside_atomic_adds_one_statement_and_no_commit():
    from django.db import transaction

    noop.enqueue()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        noop.enqueue()
        noop.enqueue()
    sqls = [q["sql"] for q in queries.captured_queries]
    inserts = [sql for sql in sqls if not sql.startswith(TRANSACTION_CONTROL)]
    assert len(inserts) == 2 * ENQUEUE["statements"], sqls
    assert not [sql for sql in sqls if sql.startswith(("SAVEPOINT", "RELEASE"))], sqls


@pytest.mark.django_db(transaction=True)
def test_enqueue_many_costs_one_statement_per_batch():
    from django_jobqueue.querysets import INSERT_BATCH

    noop.enqueue()
    with CaptureQueriesContext(connection) as queries:
        add.enqueue_many([(i, i) for i in range(INSERT_BATCH + 1)])
    sqls = [q["sql"] for q in queries.captured_queries]
    inserts = [sql for sql in sqls if not sql.startswith(TRANSACTION_CONTROL)]
    # Two batches in one transaction; on SQLite the write lock is taken first (one
    # statement that writes nothing: lock_for_writing).
    lock = 1 if connection.vendor == "sqlite" else 0
    assert len(inserts) == 2 + lock, [sql[:80] for sql in sqls]
    assert _commits(sqls) == 1, [sql[:80] for sql in sqls]
