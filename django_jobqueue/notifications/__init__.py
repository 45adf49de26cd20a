"""Notifications over the channel layer: hints that make waiting and waking fast.

One process-wide :class:`Hub` owns a background thread with a long-lived event loop (the
channel layer's connections are per event loop, so ``async_to_sync`` per call would pay a new
connection each time). It multiplexes every waiter of the process over one channel:

* "finished": a worker ``group_send``s to the job's group (a hash of the job id, so any id
  works); waiters ``group_add`` the process channel to that group *before* the job is written.
* "progress": a worker ``group_send``s to the job's group after it wrote the job's new
  ``progress`` (:meth:`Hub.job_progress`, throttled per job); waiters may ignore it, the
  WebSocket watchers of ``django_jobqueue.live`` read the new value from the database.
* "work available": producers ``send`` to the plain channel ``djq.work.<queue>`` on commit.
  On a queue-like layer (``RedisChannelLayer``) a plain channel is popped by exactly one
  receiver, so one new job wakes one idle worker; on a broadcast layer
  (``RedisPubSubChannelLayer``: one Redis command per message, the lowest latency) every idle
  worker of the queue gets it and they race for the job with ``SKIP LOCKED``.

The database stays the truth. Every layer call is bounded by ``NOTIFY_TIMEOUT``; a failure
logs one warning, switches the hub to "degraded" for a few seconds (calls are skipped, callers
poll the database) and it tries again after that. A message that is not exactly one of the
three above is ignored and logged, never acted upon.

Without notifications (or when one is lost) the database answers anyway: the process's
safety-net poll (``safetynet``) reads what its waiters wait for and has its watchers read
what they watch.

Modules, each importing only those before it: ``log``, ``names`` (group and channel names,
the messages), ``link`` (loop thread, bounded calls, degrade/recover), ``waiters``,
``wakeups``, ``cancels`` (a worker's channel for cancel requests), ``progress``, then
``hub`` composing them, ``safetynet`` (the one poller for lost notifications), and
``process``: ``runtime``, the one object that owns the process's hub, safety net, async
waiters' threads and watchers, with one fork and reset policy and a public seam for tests.
"""

from .hub import Hub
from .link import DEGRADED_RETRY, Link, broadcasts, run_loop
from .log import logger
from .names import FINISHED_TYPE, PROGRESS_TYPE, WORK_TYPE, group_for, work_channel
from .process import Runtime, hub, reset_hub, runtime
from .progress import ProgressSender
from .safetynet import RESYNC, SafetyNet
from .waiters import AsyncWaiter, Subscription, ThreadWaiter, Waiter, Waiters
from .wakeups import WAKE_SPACING, IdleFlag, Wakeups

__all__ = [
    "DEGRADED_RETRY",
    "FINISHED_TYPE",
    "PROGRESS_TYPE",
    "RESYNC",
    "WAKE_SPACING",
    "WORK_TYPE",
    "AsyncWaiter",
    "Hub",
    "IdleFlag",
    "Link",
    "ProgressSender",
    "Runtime",
    "SafetyNet",
    "Subscription",
    "ThreadWaiter",
    "Waiter",
    "Waiters",
    "Wakeups",
    "broadcasts",
    "group_for",
    "hub",
    "logger",
    "reset_hub",
    "run_loop",
    "runtime",
    "work_channel",
]
