"""The benchmark's task: a no-op that marks its time (the same in every queue)."""

try:
    from django.tasks import task  # Django 6
except ImportError:  # Django 5.2: the backport
    from django_tasks import task

from bench.peerapps.mark import mark


@task
def noop() -> None:
    """Mark the time, return None."""
    mark()
