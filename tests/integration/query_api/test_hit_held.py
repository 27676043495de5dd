"""A hot value is not sent again on every hit (issue 18), and never served stale.

The hit script answers 1 instead of the value when the key the read names now
(its current generations) is the one whose value this process holds and has TTL
left (query_api/cache.py ``ReadCache._held``). A bump, an entry gone from Redis
or the TTL the entry had when it came end the holding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from audit_events.settings import AuditSettings
from query_api.cache import HitConnections, ReadCache

pytestmark = pytest.mark.integration


@pytest.fixture(params=["own connections", "client"])
async def cache(
    request: pytest.FixtureRequest, settings: AuditSettings, unique: str
) -> AsyncIterator[tuple[ReadCache, Redis, list[Any]]]:
    """A cache on the real Redis, with HitConnections or the client; the hit replies seen."""
    pool = BlockingConnectionPool.from_url(settings.redis_url or "", socket_timeout=2.0)
    redis = Redis.from_pool(pool)
    hits = HitConnections(pool, 4) if request.param == "own connections" else None
    cache = ReadCache(redis, 60, namespace=f"{unique}-{len(request.param)}", hit_connections=hits)
    replies: list[Any] = []
    if hits is not None:
        call = hits.call_packed

        async def recorded(command: list[bytes]) -> object:
            reply = await call(command)
            replies.append(reply)
            return reply

        hits.call_packed = recorded  # type: ignore[method-assign]
    else:
        evalsha = redis.evalsha

        async def recorded_client(*args: Any) -> Any:
            reply = await evalsha(*args)
            replies.append(reply)
            return reply

        redis.evalsha = recorded_client  # type: ignore[method-assign]
    try:
        yield cache, redis, replies
    finally:
        await cache.aclose()
        await redis.aclose()


async def test_a_held_value_is_not_sent_again_and_a_bump_ends_it(
    cache: tuple[ReadCache, Redis, list[Any]], unique: str
) -> None:
    read_cache, redis, replies = cache
    tenant = f"held-{unique}"
    args = ("list", tenant, read_cache.tenant_scope(tenant), "q")
    page = b"x" * 50_000
    loads: list[bytes] = []

    async def loader() -> bytes:
        loads.append(page)
        return page

    assert await read_cache.get_or_load(*args, loader) == (page, "miss")
    await asyncio.sleep(read_cache.grace_seconds + 0.1)
    replies.clear()
    for _ in range(5):
        assert await read_cache.get_or_load(*args, loader) == (page, "hit")
    assert isinstance(replies[0], list) and page in replies[0]  # the value, once
    assert replies[1:] == [1, 1, 1, 1]  # then: "the value you hold"
    # A write bumps the tenant's generation: the held value is never served again.
    page = b"y" * 50_000
    await redis.incr(read_cache.tenant_scope(tenant)[0])
    assert await read_cache.get_or_load(*args, loader) == (page, "miss")
    assert len(loads) == 2


async def test_a_held_value_ends_with_its_entry_and_its_refresh(
    cache: tuple[ReadCache, Redis, list[Any]], unique: str
) -> None:
    read_cache, redis, replies = cache
    tenant = f"gone-{unique}"
    args = ("list", tenant, read_cache.tenant_scope(tenant), "q")
    versions = iter([b"v1", b"v2", b"v3"])

    async def loader() -> bytes:
        return next(versions)

    assert await read_cache.get_or_load(*args, loader) == (b"v1", "miss")
    await asyncio.sleep(read_cache.grace_seconds + 0.1)
    assert await read_cache.get_or_load(*args, loader) == (b"v1", "hit")  # now held
    [key] = await redis.keys(f"*q:list:{tenant}:*")
    await redis.delete(key)  # evicted, flushed or expired
    assert await read_cache.get_or_load(*args, loader) == (b"v2", "miss")
    await asyncio.sleep(read_cache.grace_seconds + 0.1)
    assert await read_cache.get_or_load(*args, loader) == (b"v2", "hit")  # held
    assert await read_cache.get_or_load(*args, loader) == (b"v2", "hit")
    assert replies[-1] == 1
    # Held no longer than its Redis entry had left when it came (another process
    # may store a new value under the same key when that entry is refreshed).
    [(_, _, until, _)] = read_cache._held.values()
    assert until <= time.monotonic() + 60
    # Near its expiry the entry is sent again and reloaded; this process then reads
    # the reloaded value, as before (its held copy is dropped).
    await redis.pexpire(key, 2_000)
    assert await read_cache.get_or_load(*args, loader) == (b"v2", "hit")
    assert isinstance(replies[-1], list) and read_cache.refreshes == 1
    await asyncio.sleep(0.3)  # the reload stored v3
    assert await read_cache.get_or_load(*args, loader) == (b"v3", "hit")
    assert await read_cache.get_or_load(*args, loader) == (b"v3", "hit")
    assert replies[-1] == 1
