"""Names on the channel layer and the three messages sent over it.

Whatever arrives on the process's channel may come from anyone who can write to the layer
(a forged Redis ``PUBLISH``, another application sharing the prefix): a message is only
acted upon when it has exactly the shape below, anything else is ignored. The one message
that carries data, a completed job's small result in its "finished" message, is signed with
``SECRET_KEY`` (an HMAC-SHA256, :func:`django.utils.crypto.salted_hmac`, over the job id,
the attempt, the result and the time it was sent): without the key a forged or altered
result is ignored and the waiter reads the database; a recorded message replayed to the
waiters of a later run of the same id is ignored once :data:`SIGNED_MAX_AGE` has passed.
Signing and checking cost about 6 microseconds per message (12 for a 4 KB result), against
a round trip of a millisecond or more.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django.utils.crypto import constant_time_compare, salted_hmac

from ..base import Status
from ..options import JOB_ID_MAX_LENGTH

FINISHED_TYPE = "jobqueue.finished"
PROGRESS_TYPE = "jobqueue.progress"
WORK_TYPE = "jobqueue.work"
CANCEL_TYPE = "jobqueue.cancel"

#: A completed job's result rides in its "finished" message when its JSON is at most this
#: many bytes: its waiters then skip their read of the database. A larger result, any
#: other outcome, or a message that is lost: the waiters read the database as before.
RESULT_IN_MESSAGE_BYTES = 4096
_SIGNING_SALT = "django_jobqueue.notifications.finished"
#: Seconds a signed result is accepted after it was sent (clocks of the worker's and the
#: waiter's hosts may differ by as much): an older one is ignored, the waiter reads the row.
SIGNED_MAX_AGE = 60


def group_for(job_id: str) -> str:
    """The channel-layer group of a job's waiters: valid whatever the id's characters."""
    return "djq.done." + hashlib.blake2b(job_id.encode(), digest_size=16).hexdigest()


def work_channel(queue: str) -> str:
    """The plain channel idle workers of ``queue`` receive "work available" on."""
    if len(queue) <= 80:
        return f"djq.work.{queue}"
    return "djq.work." + hashlib.blake2b(queue.encode(), digest_size=16).hexdigest()


def cancel_channel(worker: str) -> str:
    """The plain channel a worker receives cancel requests for its running jobs on."""
    return "djq.cancel." + hashlib.blake2b(worker.encode(), digest_size=16).hexdigest()


def cancel_message(job_id: str) -> dict[str, Any]:
    """The "cancel" message: the worker running ``job_id`` should look at its cancel flag."""
    return {"type": CANCEL_TYPE, "job_id": job_id}


def finished_message(job_id: str, completed: tuple[int, Any] | None = None) -> dict[str, Any]:
    """The "finished" message of a job, as its worker sends it to the job's group;
    ``completed``: ``(attempts, result)`` of a job that completed, carried as
    ``"status"``, ``"attempts"`` and ``"result"`` (the result as JSON text), signed in
    ``"signature"``."""
    message: dict[str, Any] = {"type": FINISHED_TYPE, "job_id": job_id}
    if completed is not None:
        attempts, result = completed
        try:
            text = json.dumps(result)
        except (TypeError, ValueError):  # not JSON after all: the waiters read the database
            return message
        if len(text) <= RESULT_IN_MESSAGE_BYTES:
            sent = int(time.time())
            message.update(
                status=Status.COMPLETED.value,
                attempts=attempts,
                result=text,
                sent=sent,
                signature=_signature(job_id, attempts, text, sent),
            )
    return message


def _signature(job_id: str, attempts: int, text: str, sent: int) -> str:
    value = f"{job_id}\x00{attempts}\x00{sent}\x00{text}"
    return salted_hmac(_SIGNING_SALT, value, algorithm="sha256").hexdigest()


def completed_outcome(message: object) -> tuple[int, Any] | None:
    """``(attempts, result)`` a well-formed "finished" message carries for a completed job,
    signed with this project's ``SECRET_KEY``; None when it carries nothing usable, or a
    signature that does not match (the waiter reads the database). The result is JSON text,
    decoded with :func:`json.loads` only: never code."""
    if _type_of(message) != FINISHED_TYPE or dict.get(message, "status") != Status.COMPLETED:  # type: ignore[call-overload]
        return None
    attempts = dict.get(message, "attempts")  # type: ignore[call-overload]
    text = dict.get(message, "result")  # type: ignore[call-overload]
    if type(attempts) is not int or attempts < 1 or type(text) is not str:
        return None
    if len(text) > RESULT_IN_MESSAGE_BYTES:
        return None
    job_id, sent = _job_id(message), dict.get(message, "sent")  # type: ignore[call-overload]
    signature = dict.get(message, "signature")  # type: ignore[call-overload]
    if job_id is None or type(sent) is not int or type(signature) is not str:
        return None
    if abs(time.time() - sent) > SIGNED_MAX_AGE:
        return None
    if not constant_time_compare(signature, _signature(job_id, attempts, text, sent)):
        return None
    try:
        return attempts, json.loads(text)
    except ValueError:
        return None


def progress_message(job_id: str) -> dict[str, Any]:
    """The "progress" message of a job, sent to the job's group after its worker wrote a new
    ``progress`` value. It says "look now": the value itself is read from the database."""
    return {"type": PROGRESS_TYPE, "job_id": job_id}


def work_message() -> dict[str, Any]:
    """The "work available" message a producer sends to a queue's work channel."""
    return {"type": WORK_TYPE}


def _type_of(message: object) -> str | None:
    if not isinstance(message, dict):
        return None
    kind = dict.get(message, "type")  # never a subclass's own get()
    return kind if type(kind) is str else None


def finished_job_id(message: object) -> str | None:
    """The job id of a well-formed "finished" message; None for anything else."""
    if _type_of(message) != FINISHED_TYPE:
        return None
    return _job_id(message)


def job_message(message: object) -> tuple[str, str] | None:
    """``(type, job id)`` of a well-formed "finished" or "progress" message; None for
    anything else."""
    kind = _type_of(message)
    if kind not in (FINISHED_TYPE, PROGRESS_TYPE):
        return None
    job_id = _job_id(message)
    return (kind, job_id) if job_id is not None else None


def _job_id(message: object) -> str | None:
    job_id = dict.get(message, "job_id")  # type: ignore[call-overload]
    if type(job_id) is not str or not 0 < len(job_id) <= JOB_ID_MAX_LENGTH:
        return None
    return job_id


def cancel_job_id(message: object) -> str | None:
    """The job id of a well-formed "cancel" message; None for anything else."""
    if _type_of(message) != CANCEL_TYPE:
        return None
    job_id = dict.get(message, "job_id")  # type: ignore[call-overload]
    if type(job_id) is not str or not 0 < len(job_id) <= JOB_ID_MAX_LENGTH:
        return None
    return job_id


def is_work(message: object) -> bool:
    """True for a well-formed "work available" message."""
    return _type_of(message) == WORK_TYPE
