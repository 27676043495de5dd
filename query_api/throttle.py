"""Failed-login rate limits per username and per client IP (fixed windows).

Counters live in Redis so every API replica sees the same limits; when Redis is
unavailable an in-process counter takes over (limits then hold per replica).
Time is an argument (``clock``) so tests need no sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.cache_keys import PREFIX

log = logging.getLogger("auditstream.api.throttle")


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
        self._limits = {"u": max_per_user, "ip": max_per_ip}
        self._window = window_seconds
        self._clock = clock
        self._local: dict[str, int] = {}

    def _subjects(self, username: str, ip: str) -> list[tuple[str, str]]:
        window = int(self._clock() // self._window)
        return [(_key("u", username, window), "u"), (_key("ip", ip, window), "ip")]

    def _retry_after(self) -> int:
        now = self._clock()
        return max(1, math.ceil((math.floor(now / self._window) + 1) * self._window - now))

    async def blocked(self, username: str, ip: str) -> int | None:
        """Seconds to wait when either limit is reached, else ``None``."""
        subjects = self._subjects(username, ip)
        keys = [k for k, _ in subjects]
        counts: list[int]
        try:
            if self._redis is None:
                raise RedisError("no redis")
            counts = [int(c or 0) for c in await self._redis.mget(keys)]
        except (RedisError, OSError):
            counts = [self._local.get(k, 0) for k in keys]
        for (_, kind), count in zip(subjects, counts, strict=True):
            if count >= self._limits[kind]:
                return self._retry_after()
        return None

    async def failed(self, username: str, ip: str) -> None:
        """Count one failed attempt against both the username and the IP."""
        keys = [k for k, _ in self._subjects(username, ip)]
        try:
            if self._redis is None:
                raise RedisError("no redis")
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, self._window + 5)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("login throttle falling back to process memory: %s", exc)
            current = {k.rsplit(":", 1)[1] for k in keys}
            self._local = {k: v for k, v in self._local.items() if k.rsplit(":", 1)[1] in current}
            for key in keys:
                self._local[key] = self._local.get(key, 0) + 1
