"""``manage.py runjobworker``: argument parsing and logging, then :class:`Worker`.run()."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_jobqueue.options import check_queue
from django_jobqueue.worker import EXIT_ABANDONED_THREADS, Worker

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def _queue(value: str) -> str:
    try:
        return check_queue(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _concurrency(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= number <= 512:
        raise argparse.ArgumentTypeError("must be between 1 and 512")
    return number


class Command(BaseCommand):
    help = (
        "Run queued jobs. Claims jobs from the database (SELECT ... FOR UPDATE SKIP LOCKED on "
        "PostgreSQL), holds a lease on each and renews it; SIGTERM or Ctrl-C finishes the "
        "running jobs and exits 0. Run as many workers, on as many hosts, as you like. "
        "When more than --concurrency threads of jobs past their time_limit are stuck (in C "
        "code that cannot be interrupted), the worker stops claiming, finishes its other jobs "
        f"and exits with code {EXIT_ABANDONED_THREADS}, for its supervisor to restart it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            "-q",
            dest="queues",
            action="append",
            type=_queue,
            metavar="NAME",
            help="Serve this queue; repeat for several (default: every queue).",
        )
        parser.add_argument(
            "--concurrency",
            "-c",
            type=_concurrency,
            default=1,
            help="Jobs run at once, each in its own thread (default: %(default)r).",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit once nothing is ready to run, nothing is running and no job of the "
            "served queues waits out a retry's backoff (a burst run finishes the retries of "
            "the work it started; jobs enqueued with a future run_after do not keep it alive).",
        )
        parser.add_argument(
            "--name",
            default=None,
            help="Worker name in logs and in each job's 'worker' column "
            "(default: host:pid:random).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(options["verbosity"])
        worker = Worker(
            options["queues"],
            concurrency=options["concurrency"],
            burst=options["burst"],
            name=options["name"],
        )
        try:
            code = worker.run()
        except KeyboardInterrupt:  # pragma: no cover - handled by the worker's signal handler
            code = 1
        if code:
            raise CommandError(f"worker exited with code {code}", returncode=code)

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        logger = logging.getLogger("django_jobqueue")
        logger.setLevel(_LEVELS.get(verbosity, logging.INFO))
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
