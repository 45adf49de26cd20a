#!/usr/bin/env python
"""The admin's search on a large job table: the query plans of its two paths.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/djq_bench_search python bench/search_plan.py [N]

Creates that database if needed, migrates it and fills the job table up to N rows (default
1,000,000, with ``enqueue_many``: no-op jobs, every 1,000th with metadata and an argument
to find), ANALYZEs it, then prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the job list's page
(100 rows) and of its capped count (10,001 rows at most) for:

* a whole job id: the index probe (``djq_job_id``), whatever the table's size;
* text that is in no row (the worst case: every row of the window is read) and text that a
  row of the window holds: a range of the primary key, ``SEARCH_WINDOW`` rows at most.

The querysets are the admin's own (``django_jobqueue.admin.search.search`` with the job
admin's fields). On a shared machine the times vary; the plans' shapes do not.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.search_settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/djq_bench_search")
os.environ.setdefault("BENCH_CHANNELS", "polling")


def create_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def fill(n: int) -> None:
    from bench.benchapp.jobs import echo
    from django_jobqueue.models import Job

    have = Job.objects.count()
    while have < n:
        size = min(10_000, n - have)
        echo.using(metadata={"tenant": f"tenant-{have}"}).enqueue_many(
            [(f"order-{have + index}",) for index in range(0, size, 1000)]
        )
        echo.enqueue_many([(index,) for index in range(size - len(range(0, size, 1000)))])
        have += size
        if have % 100_000 == 0:
            print(f"  {have:,} rows", flush=True)


def explain(queryset) -> str:
    from django.db import connection

    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    create_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from django_jobqueue.admin import JobAdmin
    from django_jobqueue.admin.search import SEARCH_WINDOW, search
    from django_jobqueue.models import Job

    call_command("migrate", verbosity=0)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    fill(n)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE django_jobqueue_job")
    total = Job.objects.count()
    newest = Job.objects.order_by("-pk").only("job_id").first()
    fields = JobAdmin.search_text_fields
    print(f"{total:,} jobs; SEARCH_WINDOW = {SEARCH_WINDOW:,}; fields: {', '.join(fields)}\n")
    terms = [
        ("a whole job id", newest.job_id if newest else ""),
        ("text in no row (reads the whole window)", "no-such-text"),
        ("text in a row of the window", f"order-{total - 5_000}"),
    ]
    base = Job.objects.only("id", "job_id", "name", "queue", "status").order_by("-id")
    for label, term in terms:
        found = search(base, term, fields)
        print(f"== {label}: {term!r}\n-- the page (100 rows):")
        print(explain(found[:100]))
        print("-- the capped count (10,001 rows at most):")
        print(explain(found.order_by().values("pk")[:10_001]))
        print()


if __name__ == "__main__":
    main()
