"""The benchmark's job: a no-op that marks its time (the same in every queue)."""

from bench.peerapps.mark import mark
from django_jobqueue import job


@job
def noop() -> None:
    """Mark the time, return None."""
    mark()
