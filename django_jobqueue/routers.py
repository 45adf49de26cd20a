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

A job written from inside ``transaction.atomic()`` on another alias than the queue's cannot
share that transaction: :func:`commits_first` names the aliases whose open blocks the write
waits for (:func:`after_commits`), so a rollback writes no job (docs/guide/production.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import connections, router, transaction
from django.db.models import Model

from . import conf

#: The app whose models share the queue's alias.
APP_LABEL = "django_jobqueue"
#: Its dotted path, as written in ``DATABASE_ROUTERS``.
ROUTER_PATH = "django_jobqueue.routers.QueueRouter"


def queue_database() -> str:
    """The alias of the database that holds the queue's tables."""
    alias = conf.settings.DATABASE
    if alias is not None:
        return alias
    return str(router.db_for_write(apps.get_model(APP_LABEL, "Job")))


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
        """The app's migrations run on the queue's alias only."""
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
    "in_user_atomic",
    "queue_database",
]
