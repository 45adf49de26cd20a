from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class JobQueueConfig(AppConfig):
    name = "django_jobqueue"
    verbose_name = "Job queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, notifications  # noqa: F401  (registers checks and receivers)

        autodiscover_modules("jobs")
