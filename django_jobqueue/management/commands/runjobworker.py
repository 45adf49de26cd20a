"""``manage.py runjobworker``: argument parsing and logging, then :class:`Worker`.run()."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import pkgutil
import signal
import subprocess
import sys
import threading
from importlib import import_module
from typing import Any

import django
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.utils import autoreload

import django_jobqueue
from django_jobqueue import periodic, telemetry
from django_jobqueue.management.argtypes import positive
from django_jobqueue.models import Job
from django_jobqueue.options import check_queue
from django_jobqueue.routers import APP_LABEL, plan
from django_jobqueue.worker import EXIT_ABANDONED_THREADS, Worker, default_concurrency
from django_jobqueue.worker import supervisor as supervising
from django_jobqueue.worker.recycling import MB, Recycling, rss_bytes

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
logger = logging.getLogger("django_jobqueue")


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


def _check_max_memory(max_memory: int | None) -> None:
    """``--max-memory`` below what this process holds already would recycle every worker
    before its first job: refuse it before anything starts."""
    if max_memory is None:
        return
    rss = rss_bytes()
    if rss >= max_memory * MB:
        raise CommandError(
            f"--max-memory {max_memory} is below this process's own size at start "
            f"({rss / MB:.0f} MB resident), so no worker could run a job: give a limit "
            f"above it, with room for the memory your jobs use (a worker grows as it runs)"
        )


def _name(value: str) -> str:
    """A worker name: it is stored in each job's 200-character ``worker`` column."""
    if not 1 <= len(value) <= 200 or not value.isprintable():
        raise argparse.ArgumentTypeError(
            f"must be 1 to 200 printable characters (it is stored on each job it runs), "
            f"not {len(value)} characters"
        )
    return value


def _warn_about_connections(concurrency: int, alias: str) -> None:
    """Each job thread may hold a database connection: warn when the worker alone could
    take more than the server allows (PostgreSQL's ``max_connections``)."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW max_connections")
            row = cursor.fetchone()
    except DatabaseError:
        return  # the worker reports an unreachable database itself
    allowed = int(row[0]) if row else 0
    needed = concurrency + 2  # the job threads, the worker's own, the async jobs' thread
    if allowed and needed > allowed:
        logging.getLogger("django_jobqueue.worker").warning(
            "--concurrency %d may need %d database connections but the server allows %d "
            "(max_connections): jobs would fail with 'too many clients'. Lower --concurrency "
            "or raise max_connections (or use a pooler such as PgBouncer).",
            concurrency,
            needed,
            allowed,
        )


def _require_migrated(alias: str) -> None:
    """Refuse to start where ``migrate`` has not created the queue's tables (or not all of
    them) on ``alias``: a clear error instead of a worker that retries "no such table" for
    good. An unreachable database is left to the worker, which waits for it."""
    from django.db.migrations.executor import MigrationExecutor

    if _all_recorded(alias):
        return
    try:
        executor = MigrationExecutor(connections[alias])
        app = Job._meta.app_label
        plan = executor.migration_plan(
            [node for node in executor.loader.graph.leaf_nodes() if node[0] == app]
        )
    except DatabaseError:
        return
    if plan:
        missing = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:3])
        more = f" and {len(plan) - 3} more" if len(plan) > 3 else ""
        raise CommandError(
            f"the job queue's tables are not ready on database {alias!r}: {len(plan)} "
            f"migration(s) not applied ({missing}{more}). Run 'python manage.py migrate"
            f"{'' if alias == DEFAULT_DB_ALIAS else f' --database {alias}'}' first, then start "
            "the worker again."
        )


def _all_recorded(alias: str) -> bool:
    """True when every migration module of this app is recorded as applied on ``alias``: one
    query, where the migration plan loads every app's migrations (a tenth of the worker's
    start-up). False sends :func:`_require_migrated` on to the plan, which says what is
    missing (or, the database unreachable, lets the worker wait for it)."""
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.recorder import MigrationRecorder

    app = Job._meta.app_label
    module_name, _ = MigrationLoader.migrations_module(app)
    try:
        package = import_module(module_name) if module_name else None
        recorded = MigrationRecorder.Migration.objects.using(alias).filter(app=app)
        applied = set(recorded.values_list("name", flat=True))
    except (ImportError, DatabaseError):
        return False
    # The names MigrationLoader.load_disk() reads from the package: its modules, less "_..."
    # and "~..." ones.
    names = {
        name
        for _, name, is_package in pkgutil.iter_modules(getattr(package, "__path__", []))
        if not is_package and name[0] not in "_~"
    }
    return bool(names) and names <= applied


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return number


def _serve_metrics(addr: str, port: int, multiprocess_dir: str | None = None) -> None:
    """Start prometheus-client's HTTP server (a daemon thread) for this worker's metrics, or
    (a supervisor) for those its worker processes write to ``multiprocess_dir``."""
    if not telemetry.metrics_enabled():
        raise CommandError(
            "--metrics-port needs prometheus-client (pip install 'django-jobqueue[metrics]') "
            "and JOBQUEUE['METRICS'] true"
        )
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.REGISTRY
    if multiprocess_dir is None:
        telemetry.instruments()  # the series exist from the start, before the first job
    else:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    try:
        prometheus_client.start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise CommandError(f"--metrics-port: cannot listen on {addr}:{port}: {exc}") from exc
    logger.info("worker metrics on http://%s:%d/", addr, port)


class Command(BaseCommand):
    # This app's checks (its settings, schedules, channel layer, limits, database), not the
    # whole project's: a worker serves no URL, template or admin page, and running every
    # app's checks was a fifth of its start-up. `manage.py check` runs them all.
    requires_system_checks = [APP_LABEL]  # the tag of those checks (checks.TAG)
    help = (
        "Run queued jobs. Claims jobs from the database (SELECT ... FOR UPDATE SKIP LOCKED on "
        "PostgreSQL), holds a lease on each and renews it; SIGTERM or Ctrl-C finishes the "
        "running jobs and exits 0. Run as many workers, on as many hosts, as you like. "
        "With --processes N, a supervisor keeps N worker processes running. "
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
            help="Serve this queue; repeat for several (default: every queue). Queues on "
            "databases of their own (JOBQUEUE['QUEUES']) are served by a worker process per "
            "database, under a supervisor.",
        )
        parser.add_argument(
            "--concurrency",
            "-c",
            type=_concurrency,
            default=None,
            help="Jobs run at once, each in its own thread (default: 4 per CPU, at least 4 "
            "and at most 32).",
        )
        parser.add_argument(
            "--processes",
            type=positive,
            default=1,
            metavar="N",
            help="Run N worker processes (each with --concurrency threads) under a supervisor "
            "that replaces any that exits (with a growing delay if it keeps dying); SIGTERM "
            "drains them all, a second SIGTERM kills them (default: %(default)r, this process "
            "alone).",
        )
        parser.add_argument(
            "--max-jobs",
            type=positive,
            default=None,
            metavar="N",
            help="After N finished jobs, a worker process finishes its running jobs and exits "
            "0, for a fresh one to take over (the supervisor of --processes starts it; "
            "without --processes, your process manager). Default: no limit.",
        )
        parser.add_argument(
            "--max-memory",
            type=positive,
            default=None,
            metavar="MB",
            help="The same, once a worker process's resident memory is past MB megabytes "
            "(checked after each finished job). Default: no limit.",
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
            type=_name,
            help="Worker name in logs and in each job's 'worker' column "
            "(default: host:pid:random).",
        )
        parser.add_argument(
            "--no-schedule",
            dest="schedule",
            action="store_false",
            help="Take no part in enqueueing periodic jobs (@job(schedule=...), "
            "JOBQUEUE['SCHEDULE']); other workers still do. By default every worker does, "
            "and each tick is enqueued once however many run.",
        )
        parser.add_argument(
            "--metrics-port",
            type=_port,
            default=None,
            metavar="PORT",
            help="Serve this worker's Prometheus metrics (jobs finished, retries, dead "
            "letters, run times) on http://ADDR:PORT/ (needs prometheus-client: the "
            "'metrics' extra); with --processes, those of every worker process, in one scrape.",
        )
        parser.add_argument(
            "--metrics-addr",
            default="127.0.0.1",
            metavar="ADDR",
            help="The address --metrics-port listens on (default: %(default)r; 0.0.0.0 for "
            "every interface).",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="For development: restart the worker when a Python file changes, with "
            "Django's autoreloader (as runserver does). Each restart stops the worker "
            "gracefully first: its running jobs finish. Not with --burst.",
        )

    def get_version(self) -> str:
        """``--version``: this app's version, and Django's."""
        return f"django-jobqueue {django_jobqueue.__version__} (Django {django.get_version()})"

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        for action in parser._actions:
            if "--version" in action.option_strings:
                action.help = "Show django-jobqueue's version and Django's, and exit."
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        self._configure_logging(options["verbosity"])
        if options["reload"] and options["burst"]:
            raise CommandError("--reload and --burst do not go together")
        aliases = plan(options["queues"])
        database = supervising.database()
        for alias in [database] if database is not None else aliases:
            _require_migrated(alias)
        _check_max_memory(options["max_memory"])
        # With --reload, the first process only restarts the second, which runs the worker;
        # with --processes, the supervisor serves its children's metrics.
        first = options["reload"] and os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) != "true"
        alone = options["processes"] == 1 and supervising.slot() is None and len(aliases) == 1
        if options["metrics_port"] is not None and alone and not first:
            _serve_metrics(options["metrics_addr"], options["metrics_port"])
        if supervising.slot() is not None:
            code = self._run_worker_process(options)
        elif not alone:
            code = self._supervise(options)
        elif options["reload"]:
            code = self._run_with_reloader(options)
        else:
            try:
                code = self._make_worker(options).run()
            except KeyboardInterrupt:  # pragma: no cover - handled by the worker's signal handler
                code = 1
        if code:
            raise CommandError(f"worker exited with code {code}", returncode=code)

    @staticmethod
    def _make_worker(options: dict[str, Any]) -> Worker:
        concurrency = options["concurrency"] or default_concurrency()
        # A worker process of a supervisor over several databases serves its alias's queues.
        aliases = plan(options["queues"])
        database = supervising.database() or next(iter(aliases))
        queues = aliases[database] if database in aliases else options["queues"]
        _warn_about_connections(concurrency, database)
        name, slot = options["name"], supervising.slot()
        if name is not None and slot is not None:  # one name per worker process
            name = f"{name[: 199 - len(str(slot))]}-{slot}"
        try:
            return Worker(
                queues,
                database=database,
                concurrency=concurrency,
                burst=options["burst"],
                name=name,
                schedule=options["schedule"],
                recycling=Recycling(options["max_jobs"], options["max_memory"]),
            )
        except ImproperlyConfigured as exc:  # a schedule that cannot work
            raise CommandError(f"{exc}\n(or start with --no-schedule)") from None

    def _run_worker_process(self, options: dict[str, Any]) -> int:
        """One worker process of ``--processes``: its supervisor serves the metrics, and it
        drains once the supervisor is gone."""
        if telemetry.metrics_enabled():
            telemetry.instruments()  # the series exist from the start, before the first job
        worker = self._make_worker(options)
        supervising.watch_parent(worker.stop)
        return worker.run()

    def _supervise(self, options: dict[str, Any]) -> int:
        """``--processes N``: a :class:`~django_jobqueue.worker.supervisor.Supervisor` over N
        worker processes, each this command line; the metrics of all in one scrape."""
        if options["reload"]:
            raise CommandError(
                "--reload and --processes do not go together (nor --reload and queues on "
                "several databases, which take a worker process each)"
            )
        if not getattr(self, "_called_from_command_line", False):  # set by run_from_argv()
            raise CommandError(
                "--processes starts each worker process with this process's command line, "
                "so it works only from the command line (manage.py runjobworker "
                "--processes N); from call_command(), start the worker processes yourself"
            )
        if options["schedule"]:  # refuse a schedule that cannot work here, not N times there
            try:
                periodic.configured()
            except ImproperlyConfigured as exc:
                raise CommandError(f"{exc}\n(or start with --no-schedule)") from None
        processes, burst = options["processes"], options["burst"]
        aliases = plan(options["queues"])
        databases = list(aliases) if len(aliases) > 1 else []  # a worker process per alias
        if databases:
            logger.info("serving queues on databases %s", ", ".join(databases))
        if options["metrics_port"] is None:
            return supervising.Supervisor(processes, burst=burst, databases=databases).run()
        with supervising.metrics_directory() as path:
            _serve_metrics(options["metrics_addr"], options["metrics_port"], path)
            env = {"PROMETHEUS_MULTIPROC_DIR": path}
            return supervising.Supervisor(
                processes, env=env, burst=burst, databases=databases
            ).run()

    def _run_with_reloader(self, options: dict[str, Any]) -> int:
        """Django's autoreloader (``django.utils.autoreload``, as runserver) around the
        worker, with graceful restarts.

        The first process only starts the second one again each time that one exits with
        code 3 (a reload): :func:`_restart_with_reloader`. The second one runs Django's file
        watcher on its main thread (``autoreload.run_with_reloader``) and the worker on
        another; when the watcher exits (a changed file, SIGTERM, Ctrl-C), the worker
        finishes its running jobs before the process ends.
        """
        if os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) != "true":
            return _restart_with_reloader()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # inherited as ignored
        started = threading.Event()
        finished = threading.Event()
        outcome: dict[str, Any] = {"code": 1}

        def run_worker() -> None:
            try:
                outcome["worker"] = self._make_worker(options)
                started.set()
                outcome["code"] = outcome["worker"].run()
            finally:
                finished.set()

        reason = "stopping"
        try:
            autoreload.run_with_reloader(run_worker)
        except SystemExit as exc:
            reason = "reloading" if exc.code == 3 else "stopping"
            raise
        finally:
            worker = outcome.get("worker") if started.is_set() else None
            if worker is not None and not finished.is_set():
                logger.info(
                    "worker name=%s %s: finishing its running jobs first", worker.name, reason
                )
                worker.stop()
                finished.wait()
        return int(outcome["code"])

    @staticmethod
    def _configure_logging(verbosity: int) -> None:
        logger = logging.getLogger("django_jobqueue")
        logger.setLevel(_LEVELS.get(verbosity, logging.INFO))
        if not logger.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)


def _restart_with_reloader() -> int:
    """The first process of ``--reload``: Django's ``autoreload.restart_with_reloader`` (the
    same child command line and environment, restarted while it exits with 3), passing
    SIGTERM on to the worker process, which then drains, instead of exiting at once:
    ``run_with_reloader`` would turn SIGTERM into ``sys.exit`` here, and its
    ``subprocess.run`` would kill the worker process. Ctrl-C reaches the worker process from
    the terminal: ignored here, so that it gets it once."""
    env = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
    args = autoreload.get_child_arguments()
    while True:
        child = subprocess.Popen(args, env=env, close_fds=False)  # noqa: S603 - our own argv
        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, functools.partial(_pass_on, child)),
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
        }
        try:
            code = child.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if code != 3:
            return code


def _pass_on(child: subprocess.Popen[bytes], signum: int, frame: object) -> None:
    """Send the signal ``signum`` that this process received to ``child``."""
    child.send_signal(signum)
