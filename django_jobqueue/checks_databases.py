"""Checks of the queues given a database of their own (``JOBQUEUE["QUEUES"][name]
["database"]``, docs/guide/scaling.md): E054, an alias that is not in ``DATABASES``; E055,
an alias where the database routers do not let ``migrate`` create the queue's tables."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.db import router

from .routers import APP_LABEL, ROUTER_PATH, queue_aliases


@register(Tags.compatibility, APP_LABEL)  # runjobworker runs these (checks.TAG)
def check_queue_databases(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """E054: a queue's ``"database"`` is not an alias of ``DATABASES``. E055: the routers
    refuse to migrate django_jobqueue on it, so its tables would never be made there."""
    errors: list[Any] = []
    for queue, alias in sorted(queue_aliases().items()):
        where = f"JOBQUEUE['QUEUES'][{queue!r}]['database'] is {alias!r}"
        if alias not in settings.DATABASES:
            errors.append(
                Error(
                    f"{where}, which is not an alias of DATABASES: the queue's jobs could "
                    "not be written.",
                    hint="Add that database to DATABASES, correct the alias, or remove "
                    "'database' to keep the queue on the main alias.",
                    id="django_jobqueue.E054",
                )
            )
        elif router.allow_migrate(alias, APP_LABEL, model_name="job") is False:
            errors.append(
                Error(
                    f"{where}, but the database routers do not allow migrating "
                    f"{APP_LABEL} there: 'manage.py migrate --database {alias}' would not "
                    "create the queue's tables.",
                    hint=f"Put {ROUTER_PATH!r} first in DATABASE_ROUTERS (it allows the "
                    "app on every queue's alias), or make your router's allow_migrate() "
                    f"return None or True for {APP_LABEL!r} on {alias!r}.",
                    id="django_jobqueue.E055",
                )
            )
    return errors
