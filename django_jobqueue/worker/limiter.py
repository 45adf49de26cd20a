"""Holding the limits per key (``JOBQUEUE["LIMITS"]``) while a worker claims.

Two holders, one interface (:class:`Limiter`):

* :class:`DatabaseLimiter` (``LIMITS_CACHE`` None): the claim of one key's jobs is one
  transaction that takes the key's turn, counts its running jobs and its starts of the last
  period, and claims only what is left (:meth:`~django_jobqueue.querysets.JobQuerySet.
  claim_limited`). The database is the truth, so nothing is held outside it: a job's slot is
  its ``running`` row, freed when the job ends or its lease expires.
* :class:`RedisLimiter` (``LIMITS_CACHE`` names a django-redis cache): one Lua script
  reserves room atomically on Redis's clock (a sorted set of leased slots and a sorted set
  of starts per key), the worker claims at most that many jobs and hands back what it could
  not use. Each slot has a lease of ``LEASE_SECONDS``, renewed while the job runs, so a
  crashed worker's slots come back when their lease ends. While Redis cannot be reached,
  limited jobs stay queued (a warning in the log) and every other job runs as before.

Both count ``rate`` as a sliding window: at most N starts in any period of its length. A job
with several keys holds them all at once or none (the database: one transaction, the keys'
locks tried in their sorted order; Redis: one script for every key).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from itertools import count
from typing import Any, NamedTuple

from .. import conf
from ..base import ClaimedJob
from ..limits import Rule
from ..models import Job
from ..querysets.limited import Hold

logger = logging.getLogger("django_jobqueue.worker")

#: Seconds between two warnings about an unreachable Redis, and between two tries.
REDIS_RETRY = 1.0

#: KEYS: slots and starts of each limit key, in turn. ARGV: the number of limit keys, the
#: lease, then concurrency, rate and period of each key (0: none), then the tokens wanted.
#: Room is the least any key leaves: every key gets the same tokens, or none does.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local first = 3 + 3 * n
local room = #ARGV - first + 1
for k = 1, n do
  local concurrency = tonumber(ARGV[3 * k])
  local rate = tonumber(ARGV[3 * k + 1])
  local period = tonumber(ARGV[3 * k + 2])
  if concurrency > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * k - 1], '-inf', now)
    room = math.min(room, concurrency - redis.call('ZCARD', KEYS[2 * k - 1]))
  end
  if rate > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * k], '-inf', now - period)
    room = math.min(room, rate - redis.call('ZCARD', KEYS[2 * k]))
  end
end
local granted = {}
for i = 1, room do granted[i] = ARGV[first + i - 1] end
for k = 1, n do
  local concurrency = tonumber(ARGV[3 * k])
  local rate = tonumber(ARGV[3 * k + 1])
  local period = tonumber(ARGV[3 * k + 2])
  for i = 1, #granted do
    if concurrency > 0 then redis.call('ZADD', KEYS[2 * k - 1], now + lease, granted[i]) end
    if rate > 0 then redis.call('ZADD', KEYS[2 * k], now, granted[i]) end
  end
  if concurrency > 0 then redis.call('EXPIRE', KEYS[2 * k - 1], math.ceil(lease) * 2 + 1) end
  if rate > 0 then redis.call('EXPIRE', KEYS[2 * k], math.ceil(period) + 1) end
end
return granted
"""

_RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], until_, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) * 2 + 1)
return #ARGV - 1
"""


class Wanted(NamedTuple):
    """What a worker asks a limiter for: up to ``limit`` jobs of ``queue`` (None: every
    queue), claimed at ``now`` and leased until ``lease_until``."""

    queue: str | None
    limit: int
    now: datetime
    lease_until: datetime


def hold(key: str, rule: Rule) -> Hold:
    """The :class:`Hold` of ``key`` under ``rule``."""
    rate = (rule.rate_count, rule.rate_period) if rule.rate_count and rule.rate_period else None
    return Hold(key, rule.concurrency, rate)


class Limiter:
    """Claims the jobs of one limit key (or set of keys) within every key's limits.

    :meth:`claim` is the interface; a holder implements :meth:`_claim`.
    """

    name = "database"

    def __init__(self, using: str, worker: str) -> None:
        self.using = using
        self.worker = worker

    def claim(
        self,
        key: str,
        holds: Sequence[Hold],
        *,
        queue: str | None,
        limit: int,
        now: datetime,
        lease_until: datetime,
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` ready jobs whose ``limit_key`` is ``key`` (one key, or
        several in their stored form; of ``queue``, None: every queue) within every one of
        ``holds`` at once (all or nothing), leased until ``lease_until``."""
        if limit <= 0:
            return []
        return self._claim(key, sorted(holds), Wanted(queue, limit, now, lease_until))

    def _claim(self, key: str, holds: list[Hold], wanted: Wanted) -> list[ClaimedJob]:
        """:meth:`claim`, for a ``wanted.limit`` of at least one: the holder's own way."""
        raise NotImplementedError

    def sync(self, held: set[int], now: float) -> None:
        """The worker holds the jobs ``held`` (by pk): free the slots of the others and
        renew the rest when due."""

    def close(self) -> None:
        """The worker stops: free every slot it still holds."""


class DatabaseLimiter(Limiter):
    """Limits held in the database (see the module docstring)."""

    def _claim(self, key: str, holds: list[Hold], wanted: Wanted) -> list[ClaimedJob]:
        return Job.objects.using(self.using).claim_limited(
            key,
            holds=holds,
            queue=wanted.queue,
            limit=wanted.limit,
            worker=self.worker,
            now=wanted.now,
            lease_until=wanted.lease_until,
        )


class RedisLimiter(Limiter):
    """Limits held in Redis through a django-redis cache (see the module docstring)."""

    name = "redis"

    def __init__(self, using: str, worker: str, alias: str) -> None:
        super().__init__(using, worker)
        from django.core.cache import caches
        from django_redis import get_redis_connection

        self.alias = alias
        self.cache = caches[alias]
        self.redis: Any = get_redis_connection(alias)
        self._reserve = self.redis.register_script(_RESERVE)
        self._renew = self.redis.register_script(_RENEW)
        self._tokens = (f"{worker}:{uuid.uuid4().hex[:8]}:{n}" for n in count())
        #: The slots this worker holds: job pk -> (its limit keys, token).
        self.held: dict[int, tuple[tuple[str, ...], str]] = {}
        self.next_renewal = 0.0
        self.retry_at = 0.0
        self.down = False

    def keys(self, key: str) -> list[str]:
        """The Redis keys of ``key``: its slots and its starts (under the cache's prefix)."""
        return [self.cache.make_key(f"djq:limit:{key}:{part}") for part in ("slots", "starts")]

    def _failed(self, what: str, exc: Exception) -> None:
        self.retry_at = time.monotonic() + REDIS_RETRY
        if not self.down:
            logger.warning(
                "limits: Redis (cache %r) unreachable while %s: %s; jobs with a limit stay "
                "queued until it is back, the others run",
                self.alias,
                what,
                exc,
            )
        self.down = True

    def _claim(self, key: str, holds: list[Hold], wanted: Wanted) -> list[ClaimedJob]:
        if time.monotonic() < self.retry_at:
            return []
        tokens = [next(self._tokens) for _ in range(wanted.limit)]
        lease = conf.settings.LEASE_SECONDS
        limits: list[Any] = []
        for one in holds:
            count_, period = one.rate or (0, 0)
            limits += [one.concurrency or 0, count_, period]
        held = tuple(one.key for one in holds)
        try:
            granted = self._reserve(
                keys=[name for one in held for name in self.keys(one)],
                args=[len(holds), lease, *limits, *tokens],
            )
        except Exception as exc:  # redis-py's errors: a connection, a timeout, a script
            self._failed("reserving room", exc)
            return []
        if self.down:
            logger.warning("limits: Redis (cache %r) reachable again", self.alias)
            self.down = False
        granted = [t.decode() if isinstance(t, bytes) else str(t) for t in granted]
        if not granted:
            return []
        try:
            claimed = Job.objects.using(self.using).claim(
                queue=wanted.queue,
                limit=len(granted),
                worker=self.worker,
                now=wanted.now,
                lease_until=wanted.lease_until,
                limit_key=key,
            )
        except BaseException:
            self._release(held, granted, starts=True)
            raise
        for job, token in zip(claimed, granted, strict=False):
            self.held[job.id] = (held, token)
        self._release(held, granted[len(claimed) :], starts=True)
        return claimed

    def _release(self, held: tuple[str, ...], tokens: list[str], *, starts: bool) -> None:
        """Free ``tokens``' slots of every key of ``held`` (and, for room never used, their
        starts)."""
        if not tokens:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for key in held:
                    slots, started = self.keys(key)
                    pipe.zrem(slots, *tokens)
                    if starts:
                        pipe.zrem(started, *tokens)
                pipe.execute()
        except Exception as exc:
            # Their lease ends them: the slots come back after LEASE_SECONDS.
            self._failed("freeing slots", exc)

    def sync(self, held: set[int], now: float) -> None:
        gone = [pk for pk in self.held if pk not in held]
        freed: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for pk in gone:
            key, token = self.held.pop(pk)
            freed[key].append(token)
        for key, tokens in freed.items():
            self._release(key, tokens, starts=False)
        if self.held and now >= self.next_renewal:
            self.next_renewal = now + conf.heartbeat_interval()
            self._renew_all()

    def _renew_all(self) -> None:
        by_key: dict[str, list[str]] = defaultdict(list)
        for held, token in self.held.values():
            for key in held:
                by_key[key].append(token)
        lease = conf.settings.LEASE_SECONDS
        try:
            for key, tokens in by_key.items():
                self._renew(keys=self.keys(key)[:1], args=[lease, *tokens])
        except Exception as exc:
            self._failed("renewing slots", exc)

    def close(self) -> None:
        self.sync(set(), time.monotonic())


def make_limiter(using: str, worker: str) -> Limiter:
    """The holder ``JOBQUEUE["LIMITS_CACHE"]`` asks for."""
    alias = conf.settings.LIMITS_CACHE
    if alias:
        return RedisLimiter(using, worker, str(alias))
    return DatabaseLimiter(using, worker)
