"""Generation-keyed Redis read-through cache with in-process single-flight.

A read's key embeds the current generation of its scope, read from Redis first;
the processor bumps generations after every stored batch. A reader that was
paused between its MongoDB read and its cache set writes under the *old*
generation, which no later reader asks for: no stale hit, no key scans.
When Redis is unavailable reads go straight to MongoDB (``X-Cache: bypass``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.cache_keys import query_key

log = logging.getLogger("auditstream.api.cache")


class ReadCache:
    def __init__(self, redis: Redis | None, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0
        self.bypasses = 0

    async def _load_once(self, key: str, loader: Callable[[], Awaitable[bytes]]) -> bytes:
        """Run ``loader`` once per key at a time; concurrent callers share its result."""
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await loader()
            fut.set_result(value)
            return value
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: callers without waiters must not warn
            raise
        finally:
            del self._inflight[key]

    async def get_or_load(
        self,
        kind: str,
        tenant: str,
        generation_keys: list[str],
        normalized_query: str,
        loader: Callable[[], Awaitable[bytes]],
    ) -> tuple[bytes, str]:
        """Return ``(value, "hit"|"miss"|"bypass")``."""
        if self._redis is None:
            self.bypasses += 1
            return await self._load_once(
                f"nocache:{kind}:{tenant}:{normalized_query}", loader
            ), "bypass"
        try:
            gens = await self._redis.mget(generation_keys)
            key = query_key(kind, tenant, [int(g or 0) for g in gens], normalized_query)
            cached = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, reading from MongoDB: %s", exc)
            self.bypasses += 1
            return await self._load_once(
                f"nocache:{kind}:{tenant}:{normalized_query}", loader
            ), "bypass"
        if cached is not None:
            self.hits += 1
            return cached if isinstance(cached, bytes) else cached.encode(), "hit"
        self.misses += 1
        leader = key not in self._inflight
        value = await self._load_once(key, loader)
        if leader:
            try:
                await self._redis.set(key, value, ex=self._ttl)
            except (RedisError, OSError) as exc:
                log.warning("cache set failed: %s", exc)
        return value, "miss"
