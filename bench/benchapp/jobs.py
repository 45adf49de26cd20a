"""Jobs the benchmarks run: as cheap as a job can be, so the queue's own cost is what shows."""

from django_jobqueue import job


@job
def noop() -> None:
    """Do nothing; return None (no result row is written)."""
    return None


@job
def echo(x):
    """Return the argument (a result row is written and read back)."""
    return x


@job
def spin(rounds: int) -> None:
    """Pure-Python work that holds the GIL for ``rounds`` iterations (the CPU-bound job of
    the ``cpu`` scenario); returns None (no result row)."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return None
