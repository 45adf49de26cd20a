"""Watch tokens: a job id and its run, signed with ``SECRET_KEY`` (Django's signing), and
an expiry.

A view hands one to its page (``handle.watch_token()``); the WebSocket consumer
(``ws/jobqueue/jobs/<token>/``) and the JSON status view accept nothing else, so a job id that
can be guessed (``welcome-email-42``) cannot be watched by whoever guesses it. The token is
signed, not encrypted: whoever holds it can read the job id in it.

A token names one run of the job (the row's primary key): once the id is reused by a later run
(its outcome expired, the id was enqueued again), the token no longer shows anything.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from django.core import signing

from .exceptions import InvalidJobError

#: Seconds a watch token works by default: long enough for a page left open on a long job.
DEFAULT_MAX_AGE = 3600
#: The longest ``max_age`` accepted: a week.
MAX_MAX_AGE = 7 * 86_400
SALT = "django_jobqueue.watch"


class Watch(NamedTuple):
    """What a valid token names: the job id, and the run (the row's primary key); ``run``
    is None in a token made before tokens named runs, which names whichever run is there."""

    job_id: str
    run: int | None
    #: When the token expires (seconds since the epoch): a socket opened with it closes then.
    expires: int


def make(job_id: str, max_age: float = DEFAULT_MAX_AGE, *, run: int | None = None) -> str:
    """A URL-safe token for the run ``run`` of ``job_id`` that expires ``max_age`` seconds
    from now."""
    if (
        isinstance(max_age, bool)
        or not isinstance(max_age, int | float)
        or not math.isfinite(max_age)
        or not 0 < max_age <= MAX_MAX_AGE
    ):
        raise InvalidJobError(
            f"watch_token(max_age=...) takes seconds, more than 0 and at most {MAX_MAX_AGE} "
            f"(a week), not {max_age!r}."
        )
    expires = math.ceil(time.time() + max_age)
    value: list[object] = [job_id, expires] if run is None else [job_id, expires, run]
    return signing.dumps(value, salt=SALT, compress=True)


def read(token: object) -> str | None:
    """The job id of a valid, unexpired token; None for anything else (missing, forged,
    expired, malformed), without saying which. :func:`read_watch` adds the run."""
    watch = read_watch(token)
    return watch.job_id if watch is not None else None


def read_watch(token: object) -> Watch | None:
    """The job id and run of a valid, unexpired token; None for anything else."""
    if not isinstance(token, str) or not token or len(token) > 4096:
        return None
    try:
        value = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        return None
    except Exception:  # a valid signature over a value this module never made
        return None
    if not isinstance(value, list) or len(value) not in (2, 3):
        return None
    job_id, expires, run = value if len(value) == 3 else (*value, None)
    if not isinstance(job_id, str) or type(expires) is not int:
        return None
    if run is not None and type(run) is not int:
        return None
    if expires < time.time():
        return None
    return Watch(job_id, run, expires)
