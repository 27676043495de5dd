"""Generation-keyed Redis read-through cache with in-process single-flight.

A read's key embeds the current generation of its scope, read from Redis first;
the processor bumps generations after every stored batch. A reader that was
paused between its MongoDB read and its cache set writes under the *old*
generation, which no later reader asks for: no stale hit, no key scans.

Single-flight: concurrent misses of one key share one load, run as its own task
(a disconnecting client cannot cancel it for the others). The finished load
stays joinable for :attr:`ReadCache.grace_seconds` after its value was stored,
so a request whose Redis GET raced the SET still does not query MongoDB again;
that is safe because the key names the generation it was read under.

When Redis is unavailable reads go straight to MongoDB (``X-Cache: bypass``),
and Redis is skipped for :attr:`ReadCache.retry_seconds` before the next try.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from audit_events.cache_keys import (
    generation_ttl_seconds,
    new_generation,
    query_key,
    target_generation,
    tenant_generation,
)

log = logging.getLogger("auditstream.api.cache")

Loader = Callable[[], Awaitable[bytes]]

# A hit in one round trip: the scopes' generations (MGET), then the value under
# the key they name, built as query_key() builds it (ARGV: the key's text before
# and after the generations). A missing counter returns fewer values than keys
# and reads nothing; a hit also returns the value's remaining TTL (ms), for the
# early refresh. Single-instance Redis (the key is not declared in KEYS).
HIT_SCRIPT = """
local gens = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
  if not gens[i] then return {} end
end
local key = ARGV[1] .. table.concat(gens, '.') .. ARGV[2]
local value = redis.call('GET', key)
if value then
  gens[#KEYS + 1] = value
  gens[#KEYS + 2] = redis.call('PTTL', key)
end
return gens
"""
_SPLIT = 7_373_737_373_737_373_737  # a generation no counter has, to split query_key()'s text


class ReadCache:
    grace_seconds = 1.0
    retry_seconds = 1.0
    # A hit with less than this share of the TTL left reloads the entry in the background.
    refresh_fraction = 0.2

    def __init__(self, redis: Redis | None, ttl_seconds: int, *, namespace: str) -> None:
        self._redis = redis
        # The deployment's key namespace (audit_events.cache_keys.cache_namespace):
        # the processor bumps the counters under the same one.
        self.namespace = namespace
        self._ttl = ttl_seconds
        self._generation_ttl = generation_ttl_seconds(ttl_seconds)
        self._hit_script = redis.register_script(HIT_SCRIPT) if redis is not None else None
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self._redis_down_until = 0.0
        self.hits = 0
        self.misses = 0
        self.bypasses = 0
        self.refreshes = 0
        # Test seam: awaited between a miss's MongoDB read and its cache set.
        self.after_load: Callable[[str], Awaitable[None]] | None = None

    def tenant_scope(self, tenant: str) -> list[str]:
        """The generation keys of a read of the tenant's events."""
        return [tenant_generation(self.namespace, tenant)]

    def target_scope(self, tenant: str, target_type: str, target_id: str) -> list[str]:
        """The generation keys of a read of one object's history."""
        return [target_generation(self.namespace, tenant, target_type, target_id)]

    async def get_or_load(
        self,
        kind: str,
        tenant: str,
        generation_keys: list[str],
        normalized_query: str,
        loader: Loader,
    ) -> tuple[bytes, str]:
        """Return ``(value, "hit"|"miss"|"bypass")``; never raises for Redis errors.

        ``loader`` (the MongoDB read) may raise; its error reaches every caller
        that shared the load.
        """
        if self._redis is None or time.monotonic() < self._redis_down_until:
            return await self._bypass(kind, tenant, normalized_query, loader)
        try:
            gens, cached, looked, ttl_ms = await self._read(
                kind, tenant, generation_keys, normalized_query
            )
            key = query_key(self.namespace, kind, tenant, gens, normalized_query)
            if not looked:
                cached = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable, reading from MongoDB: %s", exc)
            self._redis_down_until = time.monotonic() + self.retry_seconds
            return await self._bypass(kind, tenant, normalized_query, loader)
        if cached is not None:
            self.hits += 1
            if ttl_ms is not None and 0 <= ttl_ms < self._ttl * 1000 * self.refresh_fraction:
                # Early refresh: a hot entry is reloaded in the background before it
                # expires (single-flight), so no reader waits on an expired hot key.
                self.refreshes += 1
                self._flight(key, loader, store=True)
            return cached if isinstance(cached, bytes) else cached.encode(), "hit"
        self.misses += 1
        return await asyncio.shield(self._flight(key, loader, store=True)), "miss"

    async def _read(
        self, kind: str, tenant: str, generation_keys: list[str], normalized_query: str
    ) -> tuple[list[int], bytes | str | None, bool, int | None]:
        """The generations, the cached value, whether it was looked up, its TTL (ms).

        One round trip (:data:`HIT_SCRIPT`). When a counter is missing the
        script reads nothing, :meth:`_generations` creates it and the caller GETs
        the value (the rare path).
        """
        assert self._hit_script is not None
        key = query_key(self.namespace, kind, tenant, [_SPLIT], normalized_query)
        head, _, tail = key.rpartition(str(_SPLIT))
        reply = await self._hit_script(keys=generation_keys, args=[head, tail])
        n = len(generation_keys)
        if len(reply) < n:  # a counter is missing
            return await self._generations(generation_keys), None, False, None
        value = reply[n] if len(reply) > n else None
        ttl_ms = int(reply[n + 1]) if len(reply) > n + 1 else None
        return [int(v) for v in reply[:n]], value, True, ttl_ms

    async def _generations(self, keys: list[str]) -> list[int]:
        """The scopes' current generations; a missing counter is created first.

        Never read a missing counter as 0: entries cached under a counter that
        was lost (restart, flush, eviction, expiry) could match again once it
        counted back up. ``SET NX`` with a fresh random value (whoever is first,
        reader or processor, creates it) makes a lost counter's values unreachable.
        """
        assert self._redis is not None
        values = await self._redis.mget(keys)
        missing = [k for k, v in zip(keys, values, strict=True) if v is None]
        if missing:  # rare: once per scope and counter lifetime (2 x the TTL)
            for k in missing:
                await self._redis.set(k, new_generation(), nx=True, ex=self._generation_ttl)
            values = await self._redis.mget(keys)
        # Gone again already (eviction): a value nobody shares, i.e. effectively uncached.
        return [int(v) if v is not None else new_generation() for v in values]

    async def _bypass(
        self, kind: str, tenant: str, normalized_query: str, loader: Loader
    ) -> tuple[bytes, str]:
        self.bypasses += 1
        key = f"nocache:{kind}:{tenant}:{normalized_query}"
        return await asyncio.shield(self._flight(key, loader, store=False)), "bypass"

    def _flight(self, key: str, loader: Loader, store: bool) -> asyncio.Task[bytes]:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key, loader, store))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._landed(key, t, store))
        return task

    async def _load(self, key: str, loader: Loader, store: bool) -> bytes:
        value = await loader()
        if store:
            if self.after_load is not None:
                await self.after_load(key)
            assert self._redis is not None
            try:
                await self._redis.set(key, value, ex=self._ttl)
            except (RedisError, OSError) as exc:
                log.warning("cache set failed: %s", exc)
        return value

    def _landed(self, key: str, task: asyncio.Task[bytes], store: bool) -> None:
        failed = task.cancelled() or task.exception() is not None  # marks it retrieved
        if store and not failed:
            asyncio.get_running_loop().call_later(self.grace_seconds, self._forget, key, task)
        else:
            self._forget(key, task)

    def _forget(self, key: str, task: asyncio.Task[bytes]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
