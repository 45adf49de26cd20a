"""Steps of the worker's loop that need only a piece or two: writing the running jobs'
progress, deciding that a burst run is over, cancels, too many abandoned threads."""

from __future__ import annotations

import logging
import time

from .. import clock, conf
from ..base import ClaimedJob
from ..models import Job
from ..notifications import hub
from ..serialization import printable
from .claiming import PAUSE_CHECK_SECONDS, Claimer
from .runner import Runner
from .timelimits import EXIT_ABANDONED_THREADS

logger = logging.getLogger("django_jobqueue.worker")


def write_progress(runner: Runner, using: str, now: float) -> None:
    """Write the progress the running jobs reported, each at most every
    ``PROGRESS_INTERVAL`` seconds (nothing at all for jobs that report none)."""
    taken = runner.take_progress(now, conf.settings.PROGRESS_INTERVAL)
    if not taken:
        return
    try:
        Job.objects.using(using).set_progress([(job.fence, value) for job, value in taken])
    except BaseException:
        runner.put_back_progress([job.id for job, _ in taken])
        raise
    # Written: its watchers (WebSocket pages) and waiters read it now (throttled per job).
    hub().job_progress([job.job_id for job, _ in taken])


def burst_is_over(
    claimer: Claimer, using: str, queues: list[str] | None, wait_for_retries: bool
) -> bool:
    """In burst mode, after a claim found nothing and with nothing held: True if nothing is
    left to do.

    Jobs of the worker's queues waiting out a retry's backoff keep it alive (a burst run
    finishes the work it started); it claims each as soon as it falls due. Jobs delayed
    by ``run_after`` at enqueue do not.
    """
    if not wait_for_retries:
        return True
    # Retries the claim could not take because they were not yet due (one that fell due
    # since then is claimed on the very next pass).
    claimed_at = claimer.claimed_at or clock.now()
    due = Job.objects.using(using).next_retry(queues, claimed_at)
    if due is None:
        return True
    wait = max(0.0, (due - clock.now()).total_seconds())
    logger.debug("worker name=%s burst: waiting %.2fs for a retry", claimer.worker, wait)
    claimer.next_poll = min(claimer.next_poll, time.monotonic() + wait)
    return False


def abandoned_too_many(runner: Runner, name: str, now: float, *, exiting: bool) -> bool:
    """Fail the attempts past their time limit; True (logged once: not when ``exiting``)
    with more than ``concurrency`` abandoned threads (interrupted, still alive): the worker
    should stop claiming, drain, and exit with :data:`EXIT_ABANDONED_THREADS`."""
    abandoned = runner.limits.expire(now)
    if abandoned <= runner.concurrency or exiting:
        return False
    logger.error(
        "worker name=%s: %d threads of jobs past their time limit are still running "
        "(more than concurrency=%d): claiming no more jobs, finishing the running "
        "ones, then exiting with code %d for the process supervisor to restart it",
        name,
        abandoned,
        runner.concurrency,
        EXIT_ABANDONED_THREADS,
    )
    return True


def cancel_held(
    ids: set[int], runner: Runner, claimer: Claimer, running: dict[int, ClaimedJob]
) -> list[ClaimedJob]:
    """Held jobs ``ids`` were asked to stop: tell the running ones (logged); take the
    buffered ones out of the buffer into ``running`` and return them (they never start: the
    caller records each as ``cancelled``)."""
    for pk in runner.cancel(ids):
        job = running.get(pk)
        if job is not None:
            logger.info(
                "job id=%s name=%s: cancel requested, stopping it",
                printable(job.job_id),
                printable(job.name),
            )
    buffered = [job for job in claimer.buffer if job.id in ids]
    if buffered:
        claimer.drop(job.id for job in buffered)
        for job in buffered:
            running[job.id] = job
    return buffered


def release_paused(claimer: Claimer, now: float) -> None:
    """Hand back the buffered (claimed, never started) jobs of queues paused since their
    claim. The loop calls it before it starts buffered jobs; it looks the pauses up at
    most every :data:`PAUSE_CHECK_SECONDS` (or ``POLL_INTERVAL``, if shorter), and only
    while the buffer holds jobs, so a worker that keeps no jobs ahead pays nothing."""
    if not claimer.buffer or now < claimer.next_pause_check:
        return
    claimer.next_pause_check = now + min(PAUSE_CHECK_SECONDS, conf.settings.POLL_INTERVAL)
    paused = claimer.jobs().paused_among(sorted({job.queue for job in claimer.buffer}))
    if not paused:
        return
    held = [job for job in claimer.buffer if job.queue in paused]
    claimer.jobs().release([job.fence for job in held])
    claimer.drop(job.id for job in held)
    logger.info(
        "worker name=%s: handed back %d claimed jobs of paused queues %s",
        claimer.worker,
        len(held),
        ",".join(sorted(paused)),
    )
