"""Settings for Django's tests/tasks suite on JobQueueBackend (scripts/django-tasks-suite)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS, JOBQUEUE

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django_tasks"]
TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
# Django's built-in backends never retry: one attempt, as the suite expects.
JOBQUEUE = {**JOBQUEUE, "MAX_ATTEMPTS": 1}
