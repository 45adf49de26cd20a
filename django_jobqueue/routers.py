"""Which database holds the queue, and the transactions a new job must wait for.

The queue's alias is one fact, :func:`queue_database`: ``JOBQUEUE["DATABASE"]`` when set,
else where Django's routers send the ``Job`` model (``"default"`` with no router). Every
table of the app lives there, side by side: a job, its result, its dead letter, the
schedules, the pauses and the workers' heartbeats are written in one transaction.

:class:`QueueRouter` makes Django agree: listed in ``DATABASE_ROUTERS``, it sends every
model of the app to ``JOBQUEUE["DATABASE"]`` (reads, writes, migrations), so ``Job.objects``
anywhere, the admin and ``migrate`` use it too. With ``DATABASE`` unset it has no opinion.
``manage.py check`` refuses ``DATABASE`` without the router (E041), an alias that is not in
``DATABASES`` (E040), a router ahead of it that sends ``Job`` elsewhere (E043), and routers
that split the app's models across aliases (E042).

Several aliases: ``JOBQUEUE["QUEUES"] = {"emails": {"database": "queue2"}}`` puts the jobs
of one queue on another alias (:func:`queue_aliases`), so queues can be split across
servers. Everything about a job then happens on its queue's alias: ``queue_database(queue)``
names it, :func:`queue_databases` lists every alias in use (``status``, ``get_job()``, the
checks), and :func:`routed` sends the writes of one ``enqueue()`` there. The router lets the
app migrate on each of them; ``manage.py check`` refuses an alias not in ``DATABASES``
(E054) and one whose tables are missing (E055).

A job written from inside ``transaction.atomic()`` on another alias than the queue's cannot
share that transaction: :func:`commits_first` names the aliases whose open blocks the write
waits for (:func:`after_commits`), so a rollback writes no job (docs/guide/production.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.models import Model

from . import conf
from .exceptions import InvalidJobError

#: The app whose models share the queue's alias.
APP_LABEL = "django_jobqueue"
#: Its dotted path, as written in ``DATABASE_ROUTERS``.
ROUTER_PATH = "django_jobqueue.routers.QueueRouter"


#: The alias the writes of the ``enqueue()`` in progress go to (:func:`routed`), if any.
_routed: ContextVar[str | None] = ContextVar("django_jobqueue_routed", default=None)


def queue_database(queue: str | None = None) -> str:
    """The alias of the database that holds ``queue``'s jobs: its ``QUEUES`` entry's
    ``"database"``, else the queue's main alias. With no ``queue``: the alias of the write in
    progress (:func:`routed`), else the main alias (``DATABASE``, or where the routers send
    ``Job``), which holds every queue not given an alias of its own."""
    if queue is not None:
        alias = queue_aliases().get(queue)
        if alias is not None:
            return alias
    else:
        alias = _routed.get()
        if alias is not None:
            return alias
    return main_database()


def main_database() -> str:
    """The main alias: ``DATABASE``, or where the routers send ``Job``. It holds every queue
    not given an alias of its own, the schedules and the batches."""
    alias = conf.settings.DATABASE
    if alias is not None:
        return alias
    return str(router.db_for_write(apps.get_model(APP_LABEL, "Job")))


def queue_aliases() -> dict[str, str]:
    """Each queue that ``JOBQUEUE["QUEUES"]`` puts on an alias of its own, with that alias
    (an entry whose ``"database"`` is not a str is left out: check E062 says why)."""
    queues = conf.settings.QUEUES
    if not queues or not isinstance(queues, dict):
        return {}
    return {
        name: entry["database"]
        for name, entry in queues.items()
        if isinstance(entry, dict) and isinstance(entry.get("database"), str)
    }


def queue_databases() -> list[str]:
    """Every alias that holds jobs: the main one first, then those of ``QUEUES``, once each."""
    return list(dict.fromkeys([main_database(), *queue_aliases().values()]))


def queues_on(alias: str) -> list[str] | None:
    """The queues whose jobs live on ``alias``: None for the main alias (every queue not
    routed elsewhere), else those ``QUEUES`` puts there."""
    if alias == main_database():
        return None
    return [name for name, where in queue_aliases().items() if where == alias]


def plan(queues: Iterable[str] | None) -> dict[str, list[str] | None]:
    """What workers of ``queues`` (None: every queue) serve on each alias: the queues on it
    (None: every queue there), main alias first. One entry unless ``QUEUES`` puts some of
    them on databases of their own."""
    if queues is None:
        return {alias: queues_on(alias) for alias in queue_databases()}
    found: dict[str, list[str] | None] = {}
    for queue in queues:
        listed = found.setdefault(queue_database(queue), [])
        assert listed is not None
        listed.append(queue)
    return found


def serving(queues: Iterable[str] | None) -> str:
    """The one alias a worker of ``queues`` serves; ``ImproperlyConfigured`` if they are on
    several (a worker process serves one database: ``runjobworker`` starts one per alias)."""
    aliases = plan(queues)
    if len(aliases) > 1:
        raise ImproperlyConfigured(
            f"These queues are on {len(aliases)} databases ({', '.join(map(repr, aliases))}, "
            "JOBQUEUE['QUEUES']): one Worker serves one database. Start one per alias "
            "(Worker(queues, database=alias)), or use 'manage.py runjobworker', which starts "
            "a worker process for each."
        )
    return next(iter(aliases))


def database_for(queues: Iterable[str]) -> str | None:
    """The alias one write of jobs on ``queues`` goes to (for :func:`routed`): None when it
    is the main alias. Jobs on queues of different aliases cannot be written in one
    transaction: :class:`~.exceptions.InvalidJobError` says so, and nothing is written."""
    aliases = queue_aliases()
    if not aliases:
        return None
    found = {aliases.get(queue) for queue in queues}
    if len(found) > 1:
        where = ", ".join(sorted(repr(alias or queue_database()) for alias in found))
        raise InvalidJobError(
            f"These jobs go to queues on different databases ({where}, JOBQUEUE['QUEUES']), "
            "which one write (enqueue_many(), a workflow, a batch) cannot span: enqueue the "
            "jobs of each database apart. Nothing was written."
        )
    return found.pop() if found else None


class routed:  # lower case: used as a function, "with routed(alias):"
    """Inside, :func:`queue_database` with no queue names ``alias`` (None: no change): the
    writes of one ``enqueue()`` (its jobs, their dependencies, its batch) go to their
    queue's alias (:func:`database_for`). A class, not a generator: it is on every enqueue."""

    __slots__ = ("alias", "token")

    def __init__(self, alias: str | None) -> None:
        self.alias = alias
        self.token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if self.alias is not None:
            self.token = _routed.set(self.alias)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _routed.reset(self.token)
            self.token = None


class QueueRouter:
    """A database router that puts every model of django_jobqueue on
    ``JOBQUEUE["DATABASE"]``; add it to ``DATABASE_ROUTERS`` (first, or ahead of any router
    that would send the app elsewhere). Without that key it has no opinion."""

    def _alias(self, app_label: str) -> str | None:
        return conf.settings.DATABASE if app_label == APP_LABEL else None

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        """The queue's alias for the app's models."""
        return self._alias(model._meta.app_label)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        """The queue's alias for the app's models."""
        return self._alias(model._meta.app_label)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        """True between two of the app's objects (they share one database)."""
        labels = {obj1._meta.app_label, obj2._meta.app_label}
        if conf.settings.DATABASE is None or APP_LABEL not in labels:
            return None
        return labels == {APP_LABEL} or None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        """The app's migrations run on the queue's aliases only: ``DATABASE`` and those of
        ``QUEUES`` (with ``DATABASE`` unset: no opinion, but yes on the aliases of
        ``QUEUES``)."""
        if app_label != APP_LABEL:
            return None
        if db in queue_aliases().values():
            return True
        alias = self._alias(app_label)
        return None if alias is None else db == alias


def in_user_atomic(using: str) -> bool:
    """True inside a ``transaction.atomic()`` block that will commit: one that is not only the
    wrapping transaction of a ``TestCase`` (or a non-transactional pytest-django test),
    whose commit never comes."""
    connection = transaction.get_connection(using)
    return connection.in_atomic_block and any(
        not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )


def commits_first(using: str) -> list[str]:
    """The aliases whose open ``atomic()`` blocks a write on ``using`` (the queue's) must wait
    for: none when ``using`` has a block of its own (the write joins it), else every other
    alias inside a block that will commit."""
    if len(connections.settings) == 1 or in_user_atomic(using):  # one database: no other
        return []
    return [
        connection.alias
        for connection in connections.all(initialized_only=True)
        if connection.alias != using and in_user_atomic(connection.alias)
    ]


def after_commits(aliases: list[str], write: Callable[[], None]) -> None:
    """Call ``write`` once every one of ``aliases`` has committed its open transaction; never
    if one rolls back. Its error, if any, is raised where the last of them commits."""
    left = set(aliases)

    def committed(alias: str) -> None:
        left.discard(alias)
        if not left:
            write()

    for alias in aliases:
        transaction.on_commit(functools.partial(committed, alias), using=alias)


__all__ = [
    "APP_LABEL",
    "ROUTER_PATH",
    "QueueRouter",
    "after_commits",
    "commits_first",
    "database_for",
    "in_user_atomic",
    "main_database",
    "plan",
    "queue_aliases",
    "queue_database",
    "queue_databases",
    "queues_on",
    "routed",
    "serving",
]
