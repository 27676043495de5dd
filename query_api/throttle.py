"""Failed-login rate limits per username and per client IP (fixed windows).

An attempt first *reserves* a slot against both limits in one Redis round trip
(a Lua script: check both counters, then INCR + EXPIRE both, atomically), and
only then is the password checked; a successful login gives its slot back.
Concurrent attempts therefore cannot all pass a check made before any of them
is counted: at most the limit is ever checked per window.

Fail closed: when Redis cannot reserve (down, timing out, read-only, out of
memory) :meth:`LoginThrottle.reserve` raises :class:`ThrottleUnavailable` and the
token endpoint answers 503 without checking anything; there is no per-process
fallback (it would multiply the limit by the replicas and forget on restart).
The counters live only in Redis; a restart of a Redis without persistence loses
them. That is not silent: a marker key without expiry is created with the first
reservation, and when it is missing later the limiter logs an error saying the
counters of the current window were lost.
Time is an argument (``clock``) so tests need no sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.cache_keys import PREFIX

log = logging.getLogger("auditstream.api.throttle")

# A key without TTL (never evicted under volatile-lru): its absence means Redis lost its data.
MARKER = f"{PREFIX}:login:since"

# KEYS: user counter, IP counter, marker. ARGV: user limit, IP limit, TTL, now.
# Returns {allowed (0/1), marker was missing (0/1)}.
_RESERVE = """
local fresh = 0
if redis.call('SET', KEYS[3], ARGV[4], 'NX') then fresh = 1 end
local u = tonumber(redis.call('GET', KEYS[1]) or '0')
local i = tonumber(redis.call('GET', KEYS[2]) or '0')
if u >= tonumber(ARGV[1]) or i >= tonumber(ARGV[2]) then return {0, fresh} end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, fresh}
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

    keys: tuple[str, ...]
    retry_after: int | None


def _key(kind: str, value: str, window: int) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()[:32]
    return f"{PREFIX}:login:{kind}:{digest}:{window}"


class LoginThrottle:
    def __init__(
        self,
        redis: Redis | None,
        *,
        max_per_user: int,
        max_per_ip: int,
        window_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._max_user = max_per_user
        self._max_ip = max_per_ip
        self._window = window_seconds
        self._clock = clock
        self._seen_marker = False
        if redis is not None:
            self._reserve = redis.register_script(_RESERVE)
            self._release = redis.register_script(_RELEASE)

    def _retry_after(self, now: float) -> int:
        return max(1, math.ceil((math.floor(now / self._window) + 1) * self._window - now))

    async def reserve(self, username: str, ip: str) -> Reservation:
        """Count one attempt for ``username`` and ``ip`` unless either limit is reached.

        Raises :class:`ThrottleUnavailable` when Redis cannot answer.
        """
        if self._redis is None:
            raise ThrottleUnavailable("no Redis configured")
        now = self._clock()
        window = int(now // self._window)
        keys = (_key("u", username, window), _key("ip", ip, window))
        args = [self._max_user, self._max_ip, self._window + 5, int(now)]
        try:
            allowed, fresh = await self._reserve(keys=[*keys, MARKER], args=args)
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
        return Reservation(keys, None if allowed else self._retry_after(now))

    async def release(self, reservation: Reservation) -> None:
        """Give the slot back (the attempt succeeded, or was never checked)."""
        if self._redis is None or reservation.retry_after is not None:
            return
        try:
            await self._release(keys=list(reservation.keys))
        except (RedisError, OSError) as exc:  # the slot stays spent: the safe side
            log.warning("could not release a login reservation: %s", exc)
