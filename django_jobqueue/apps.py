"""The app's configuration: on ``ready()`` it registers the checks and the notification
receivers, follows ``JOBQUEUE["EAGER"]`` and imports every installed app's ``jobs`` (and,
with this package's ``TASKS`` backend, ``tasks``) module so their jobs are registered."""

from collections.abc import Mapping

from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


class JobQueueConfig(AppConfig):
    name = "django_jobqueue"
    verbose_name = "Job queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, checks_databases, notifications  # noqa: F401  (registers checks and receivers)
        from .worker import inline

        inline.follow_eager_setting()
        autodiscover_modules("jobs")
        if uses_task_backend():
            # Tasks of Django's Tasks framework register when their module is imported.
            autodiscover_modules("tasks")


def uses_task_backend() -> bool:
    """True when a ``TASKS`` backend is ``django_jobqueue.backend.JobQueueBackend`` (or
    another of this package): then the ``tasks`` modules of installed apps hold its tasks."""
    tasks = getattr(settings, "TASKS", None)
    if not isinstance(tasks, Mapping):
        return False
    return any(
        isinstance(params, Mapping)
        and str(params.get("BACKEND", "")).startswith("django_jobqueue.")
        for params in tasks.values()
    )
