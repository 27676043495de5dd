"""Failed-login rate limits per username and per client IP (fixed windows).

An attempt first *reserves* a slot against both limits in one Redis round trip
(a Lua script: check both counters, then INCR + EXPIRE both, atomically), and
only then is the password checked; a successful login gives its slot back, a
failed one keeps it and is counted as failed too. Concurrent attempts therefore
cannot all pass a check made before any of them is counted: at most the limit
is ever checked per window. An attempt that finds the slots taken by attempts
still being checked (not by failures) waits for them (up to
:data:`BUSY_WAIT_SECONDS`) instead of being refused: N correct logins at once
(a service's replicas starting together) all succeed, as N in a row do.

Fail closed: when Redis cannot reserve (down, timing out, read-only, out of
memory) :meth:`LoginThrottle.reserve` raises :class:`ThrottleUnavailable` and the
token endpoint answers 503 without checking anything; there is no per-process
fallback (it would multiply the limit by the replicas and forget on restart).

Lockouts survive a Redis restart: the failure that reaches a limit also writes
the lockout to MongoDB (``login_lockouts``, until the window ends). Redis
without persistence loses its counters on a restart; a marker key without
expiry, written with the first reservation, tells the limiter how old Redis'
state is, and while it is younger than one window every allowed reservation
also asks MongoDB for a lockout of its name or IP (and restores it in Redis).
Counts below the limit are lost with Redis (at most one more window's budget);
the loss is logged.
Time is an argument (``clock``) so tests need no sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.cache_keys import scope

log = logging.getLogger("auditstream.api.throttle")

LOCKOUTS_COLLECTION = "login_lockouts"
BUSY_WAIT_SECONDS = 10.0  # an attempt waits this long at most for the checks under way
# Between two reservation attempts while waiting: doubling from the first to the
# second (jittered), so a crowd of waiting attempts costs Redis little.
BUSY_POLL_SECONDS = (0.02, 0.25)


# A key without TTL (never evicted under volatile-lru): its absence means Redis lost
# its data; its value is the time Redis' limiter state began.
def marker_key(namespace: str = "") -> str:
    return f"{scope(namespace)}:login:since"


MARKER = marker_key()  # of the default namespace

# KEYS: user counter, IP counter, marker, user failures, IP failures. ARGV: user
# limit, IP limit, TTL, now. A counter holds the attempts being checked plus the
# failed ones. Returns {allowed (0/1), marker was missing (0/1), user count, IP
# count, state began, locked (0/1: refused by failures alone, not by checks under way)}.
_RESERVE = """
local fresh = 0
if redis.call('SET', KEYS[3], ARGV[4], 'NX') then fresh = 1 end
local since = tonumber(redis.call('GET', KEYS[3]) or ARGV[4])
local u = tonumber(redis.call('GET', KEYS[1]) or '0')
local i = tonumber(redis.call('GET', KEYS[2]) or '0')
if u >= tonumber(ARGV[1]) or i >= tonumber(ARGV[2]) then
  local fu = tonumber(redis.call('GET', KEYS[4]) or '0')
  local fi = tonumber(redis.call('GET', KEYS[5]) or '0')
  local locked = 0
  if fu >= tonumber(ARGV[1]) or fi >= tonumber(ARGV[2]) then locked = 1 end
  return {0, fresh, u, i, since, locked}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, fresh, u + 1, i + 1, since, 0}
"""

# The checked attempt failed: KEYS = user failures, IP failures; ARGV[1] = TTL.
# Returns the failure counts with this one.
_FAIL = """
local out = {}
for n, key in ipairs(KEYS) do
  out[n] = redis.call('INCR', key)
  redis.call('EXPIRE', key, ARGV[1])
end
return out
"""

# Put lockouts found in MongoDB back: KEYS = user counter, IP counter, user failures,
# IP failures; ARGV[1] = TTL, then per counter its limit (set the counter and its
# failures to it) or 0 (give this attempt's slot back).
_RESTORE = """
for n = 1, 2 do
  local limit = tonumber(ARGV[n + 1])
  if limit > 0 then
    redis.call('SET', KEYS[n], limit, 'EX', ARGV[1])
    redis.call('SET', KEYS[n + 2], limit, 'EX', ARGV[1])
  elseif tonumber(redis.call('GET', KEYS[n]) or '0') > 0 then
    redis.call('DECR', KEYS[n])
  end
end
return 1
"""

# Give back one slot on each key that still exists (DECR keeps the TTL).
_RELEASE = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 1
"""


class ThrottleUnavailable(Exception):
    """Redis could not reserve the attempt; the login must not be checked."""


@dataclass(frozen=True)
class Reservation:
    """An attempt counted against both limits, or refused (``retry_after`` seconds)."""

    keys: tuple[str, ...]  # user counter, IP counter
    retry_after: int | None
    counts: tuple[int, ...] = (0, 0)  # the counters with this attempt
    window_end: float = 0.0
    failure_keys: tuple[str, ...] = ()  # user failures, IP failures


def _key(namespace: str, kind: str, value: str, window: int) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{scope(namespace)}:login:{kind}:{digest}:{window}"


class LoginThrottle:
    def __init__(
        self,
        redis: Redis | None,
        *,
        max_per_user: int,
        max_per_ip: int,
        window_seconds: int,
        lockouts: AsyncCollection[dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        namespace: str = "",
        busy_wait_seconds: float = BUSY_WAIT_SECONDS,
    ) -> None:
        self._redis = redis
        # The deployment's key namespace (audit_events.cache_keys.cache_namespace):
        # two deployments on one Redis count their logins apart.
        self._namespace = namespace
        self._marker = marker_key(namespace)
        self._limits = (max_per_user, max_per_ip)
        self._window = window_seconds
        self._lockouts = lockouts
        self._clock = clock
        self._busy_wait = busy_wait_seconds
        self._seen_marker = False
        if redis is not None:
            self._reserve = redis.register_script(_RESERVE)
            self._fail = redis.register_script(_FAIL)
            self._release = redis.register_script(_RELEASE)
            self._restore = redis.register_script(_RESTORE)

    async def create_indexes(self) -> None:
        """MongoDB drops a lockout once its window has ended (TTL index)."""
        if self._lockouts is not None:
            await self._lockouts.create_index(
                "until", expireAfterSeconds=0, name="login_lockout_expiry"
            )

    def _retry_after(self, now: float) -> int:
        return max(1, math.ceil((math.floor(now / self._window) + 1) * self._window - now))

    async def reserve(self, username: str, ip: str) -> Reservation:
        """Count one attempt for ``username`` and ``ip`` unless either limit is reached.

        While the limit is reached by attempts still being checked (not by failures),
        wait up to ``busy_wait_seconds`` for a slot (their outcome decides).
        Raises :class:`ThrottleUnavailable` when Redis cannot answer.
        """
        if self._redis is None:
            raise ThrottleUnavailable("no Redis configured")
        waiting_until = time.monotonic() + self._busy_wait
        pause, most = BUSY_POLL_SECONDS
        while True:
            reservation = await self._reserve_once(username, ip)
            if reservation.retry_after is None or reservation.retry_after > 0:
                return reservation
            if time.monotonic() >= waiting_until:  # still busy: try again in a second
                return Reservation(reservation.keys, 1)
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(most, pause * 2)

    async def _reserve_once(self, username: str, ip: str) -> Reservation:
        """One reservation; ``retry_after`` 0: refused by checks still under way."""
        now = self._clock()
        window = int(now // self._window)
        window_end = (window + 1) * self._window
        ns = self._namespace
        keys = (_key(ns, "u", username, window), _key(ns, "ip", ip, window))
        failure_keys = (_key(ns, "fu", username, window), _key(ns, "fi", ip, window))
        args = [*self._limits, self._window + 5, int(now)]
        try:
            allowed, fresh, users, ips, since, locked = await self._reserve(
                keys=[*keys, self._marker, *failure_keys], args=args
            )
        except (RedisError, OSError) as exc:
            raise ThrottleUnavailable(str(exc)) from exc
        if fresh and self._seen_marker:
            log.error(
                "login rate-limit counters were lost (Redis restarted without persistence "
                "or was flushed): failed attempts of the current window count from zero"
            )
        elif fresh:
            log.warning(
                "login rate-limit state starts empty in Redis (first use, or Redis lost "
                "its data): failed attempts made before now are not counted"
            )
        self._seen_marker = True
        if not allowed:
            return Reservation(keys, self._retry_after(now) if locked else 0)
        # While Redis' state is younger than a window, lockouts it lost may still hold.
        young = now - int(since) <= self._window + 5
        if (
            young
            and self._lockouts is not None
            and await self._restore_lockouts(keys, failure_keys, now)
        ):
            return Reservation(keys, self._retry_after(now))
        return Reservation(keys, None, (int(users), int(ips)), window_end, failure_keys)

    async def _restore_lockouts(
        self, keys: tuple[str, ...], failure_keys: tuple[str, ...], now: float
    ) -> bool:
        assert self._lockouts is not None
        try:
            found = await self._lockouts.find(
                {"_id": {"$in": list(keys)}, "until": {"$gt": datetime.fromtimestamp(now, UTC)}},
                {"_id": 1},
            ).to_list()
        except PyMongoError as exc:
            raise ThrottleUnavailable(f"lockouts unreadable: {exc}") from exc
        locked = {doc["_id"] for doc in found}
        if not locked:
            return False
        limits = [
            limit if key in locked else 0 for key, limit in zip(keys, self._limits, strict=True)
        ]
        try:
            await self._restore(keys=[*keys, *failure_keys], args=[self._window + 5, *limits])
        except (RedisError, OSError) as exc:
            raise ThrottleUnavailable(str(exc)) from exc
        log.warning("restored %d login lockout(s) that Redis had lost", len(locked))
        return True

    async def failed(self, reservation: Reservation) -> None:
        """The checked attempt failed (its slot stays spent): counted as a failure, and
        a limit the failures reach is written to MongoDB too."""
        if reservation.retry_after is not None:
            return
        counts = reservation.counts  # if Redis cannot count it: the counters with it
        if self._redis is not None and reservation.failure_keys:
            try:
                counts = tuple(
                    await self._fail(keys=list(reservation.failure_keys), args=[self._window + 5])
                )
            except (RedisError, OSError) as exc:  # the slot stays spent: still limited
                log.warning("could not count a failed login: %s", exc)
        if self._lockouts is None:
            return
        until = datetime.fromtimestamp(reservation.window_end, UTC)
        for key, count, limit in zip(reservation.keys, counts, self._limits, strict=True):
            if count < limit:
                continue
            try:
                await self._lockouts.update_one(
                    {"_id": {"$eq": key}}, {"$set": {"until": until}}, upsert=True
                )
            except PyMongoError as exc:  # Redis still holds it; only a restart would lose it
                log.warning("could not record a login lockout in MongoDB: %s", exc)

    async def release(self, reservation: Reservation) -> None:
        """Give the slot back (the attempt succeeded, or was never checked)."""
        if self._redis is None or reservation.retry_after is not None:
            return
        try:
            await self._release(keys=list(reservation.keys))
        except (RedisError, OSError) as exc:  # the slot stays spent: the safe side
            log.warning("could not release a login reservation: %s", exc)
