"""``manage.py jobqueue pause`` and ``resume``, and how ``status`` and ``health`` show the
paused queues: the command's pieces about pauses, kept beside it (see
:mod:`django_jobqueue.pauses` for what a pause does)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django_jobqueue.exceptions import InvalidJobError
from django_jobqueue.models import QueuePause
from django_jobqueue.options import check_queue
from django_jobqueue.pauses import (
    REASON_MAX_LENGTH,
    in_use,
    pause_queue,
    paused_queues,
    resume_queue,
)

#: Who paused a queue from the command line, when ``--by`` is not given.
COMMAND_LINE = "manage.py jobqueue"


def queue_name(value: str) -> str:
    """An argparse type: a valid queue name (else a usage error saying why)."""
    try:
        return check_queue(value)
    except InvalidJobError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reason(value: str) -> str:
    if len(value) > REASON_MAX_LENGTH:
        raise argparse.ArgumentTypeError(f"at most {REASON_MAX_LENGTH} characters")
    return value


def declare(sub: Any) -> None:
    """The ``pause`` and ``resume`` subcommands, on the subparsers ``sub``."""
    pause = sub.add_parser(
        "pause",
        help="Pause a queue: workers start none of its jobs until it is resumed.",
        description="Pause QUEUE: from the pause's commit no worker claims one of its "
        "jobs (workers hand back within a second the ones they claimed ahead and did "
        "not start); jobs can still be enqueued, and running ones finish. Queues exist by "
        "use, so a queue no job has used yet can be paused too. Pausing a paused queue "
        "records the new reason.",
    )
    pause.add_argument("queue", type=queue_name, metavar="QUEUE", help="The queue to pause.")
    pause.add_argument(
        "--reason", type=_reason, default="", help="Why (shown by status, metrics, admin)."
    )
    pause.add_argument(
        "--by",
        default="",
        help=f"Who pauses it (default: {COMMAND_LINE!r} and the login name, if known).",
    )
    resume = sub.add_parser(
        "resume",
        help="Resume a paused queue.",
        description="Resume QUEUE: workers claim its jobs again (an idle one at once when "
        "there is a channel layer). Resuming a queue that is not paused says so and "
        "changes nothing.",
    )
    resume.add_argument("queue", type=queue_name, metavar="QUEUE", help="The queue to resume.")


def _operator() -> str:
    import getpass

    try:
        return f"{COMMAND_LINE} ({getpass.getuser()})"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return COMMAND_LINE


def pause(options: dict[str, Any], write: Callable[[str], None]) -> None:
    """``jobqueue pause QUEUE``."""
    queue = options["queue"]
    known = in_use(queue)
    row = pause_queue(queue, options["reason"], options["by"] or _operator())
    write(f"paused queue {queue!r} at {row.paused_at.isoformat()[:19]} UTC by {row.paused_by}")
    if not known:
        write(
            f"note: no registered job names queue {queue!r} and none of its jobs is queued "
            "(queues exist by use, so pausing it is allowed); its jobs will wait until it is "
            "resumed"
        )


def resume(options: dict[str, Any], write: Callable[[str], None]) -> None:
    """``jobqueue resume QUEUE`` (exit 0 also when it was not paused)."""
    queue = options["queue"]
    if resume_queue(queue):
        write(f"resumed queue {queue!r}")
    else:
        write(f"queue {queue!r} is not paused: nothing to resume")


def describe(pause: QueuePause, now: datetime) -> dict[str, Any]:
    """A pause as plain JSON values (``status --json``)."""
    return {
        "queue": pause.queue,
        "reason": pause.reason,
        "paused_by": pause.paused_by,
        "paused_at": pause.paused_at.isoformat(),
        "paused_seconds": max(0.0, (now - pause.paused_at).total_seconds()),
    }


def paused_report(now: datetime) -> list[dict[str, Any]]:
    """The paused queues, in name order, as :func:`describe` gives them."""
    return [describe(pause, now) for pause in paused_queues().values()]


def render(paused: list[dict[str, Any]]) -> list[str]:
    """Lines about the paused queues, for ``status`` and ``health`` (none when none is)."""
    return [
        f"paused: {p['queue']} since {p['paused_at'][:19]} UTC"
        + (f" by {p['paused_by']}" if p["paused_by"] else "")
        + (f": {p['reason']}" if p["reason"] else "")
        for p in paused
    ]
