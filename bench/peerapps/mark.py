"""What every benchmark job does: append its finishing time to a file of its process.

The job is the same cheap no-op in every queue, plus one ``os.write`` of a fixed-width
timestamp (a few microseconds), so the harness sees when each job ran without asking any
queue's result store: ``PEERS_MARK_DIR`` holds one file per worker process, and the driver
counts lines and reads the first and last timestamps.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LINE = 18  # "%17.6f\n"

_fd: int | None = None
_pid = 0


def mark() -> None:
    """Append ``time.time()`` to this process's mark file (opened on first use, per pid)."""
    global _fd, _pid
    pid = os.getpid()
    if _fd is None or _pid != pid:  # a forked worker child opens its own file
        directory = os.environ["PEERS_MARK_DIR"]
        _fd = os.open(
            os.path.join(directory, f"{pid}.marks"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        _pid = pid
    os.write(_fd, b"%17.6f\n" % time.time())


def count(directory: Path) -> int:
    """Jobs marked so far in ``directory`` (from the files' sizes: cheap to poll)."""
    total = 0
    for path in directory.glob("*.marks"):
        try:
            total += path.stat().st_size // LINE
        except FileNotFoundError:
            continue
    return total


def times(directory: Path) -> list[float]:
    """Every mark in ``directory``, sorted."""
    values: list[float] = []
    for path in directory.glob("*.marks"):
        values += [float(line) for line in path.read_text().split()]
    return sorted(values)
