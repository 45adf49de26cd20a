#!/usr/bin/env python
"""CPU per ``enqueue()`` in one process: what a web process pays per job, apart from the
database's own time.

    DATABASE_URL=postgres://...:5432/djq_bench python bench/enqueue_cpu.py [N] [--profile]

Migrates the bench database (bench/settings.py), warms up with 200 enqueues, then times N
(default 2,000) ``noop.enqueue()`` calls in autocommit with ``time.process_time`` and prints
milliseconds of CPU per call; ``--profile`` runs them under cProfile (slower, and says where
the time goes) and prints the 35 costliest calls by cumulative time. Compare two commits by
running it in a worktree of each, one after the other, on a quiet machine.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from bench.benchapp.jobs import noop

    call_command("migrate", verbosity=0)
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), "2000"))
    profile = "--profile" in sys.argv
    for _ in range(200):
        noop.enqueue()
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for _ in range(count):
        noop.enqueue()
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - started
    mode = " (under cProfile)" if profile else ""
    print(f"enqueue(): {spent / count * 1000:.3f} ms of CPU per call{mode}, {count} calls")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
