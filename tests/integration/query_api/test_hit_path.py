"""A cached hit costs one Redis command (issue 18): the generations and the value
are read by one script, not MGET then GET."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from audit_events.settings import AuditSettings
from tests.helpers import Store, bearer, make_event

pytestmark = pytest.mark.integration


async def calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_a_hit_is_one_redis_command(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await db.put([make_event(n) for n in range(5)])
    auth = bearer(settings)
    first = await http.get("/v1/events?limit=3", headers=auth)
    assert first.headers["X-Cache"] == "miss"
    redis = Redis.from_url(settings.redis_url or "")
    try:
        before = await calls(redis)
        for _ in range(10):
            hit = await http.get("/v1/events?limit=3", headers=auth)
            assert hit.headers["X-Cache"] == "hit" and hit.content == first.content
        after = await calls(redis)
    finally:
        await redis.aclose()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    spent.pop("info", None)
    # One EVALSHA per hit; commandstats also counts the MGET and GET the script
    # runs inside Redis, but no hit sends them as commands of their own.
    assert spent.get("evalsha", 0) >= 10, spent
    assert spent.get("get", 0) <= spent["evalsha"] and spent.get("mget", 0) <= spent["evalsha"]


async def test_a_hot_entry_is_refreshed_before_it_expires(
    settings: AuditSettings, unique: str
) -> None:
    """No reader waits on an expired hot entry: a hit near the TTL reloads in the background."""
    from query_api.cache import ReadCache

    redis = Redis.from_url(settings.redis_url or "")
    cache = ReadCache(redis, ttl_seconds=10, namespace=unique)
    loads: list[int] = []

    async def loader() -> bytes:
        loads.append(1)
        await asyncio.sleep(0.2)  # a slow store read
        return f"v{len(loads)}".encode()

    tenant = f"refresh-{unique}"
    args = ("list", tenant, cache.tenant_scope(tenant), "q")
    try:
        assert await cache.get_or_load(*args, loader) == (b"v1", "miss")
        assert await cache.get_or_load(*args, loader) == (b"v1", "hit")
        assert len(loads) == 1  # plenty of TTL left: no refresh
        await asyncio.sleep(cache.grace_seconds + 0.1)  # the load's single-flight grace ends
        for key in await redis.keys(f"as:v1:db={unique}:q:list:{tenant}:*"):
            await redis.pexpire(key, 1_000)  # the entry is about to expire
        began = time.perf_counter()
        assert await cache.get_or_load(*args, loader) == (b"v1", "hit")  # served at once
        assert time.perf_counter() - began < 0.15
        await asyncio.sleep(0.5)
        assert len(loads) == 2 and cache.refreshes == 1  # reloaded in the background
        await asyncio.sleep(0.8)  # past the old expiry
        assert await cache.get_or_load(*args, loader) == (b"v2", "hit")
        assert len(loads) == 2
    finally:
        await redis.aclose()


async def test_hits_use_their_own_connections_bounded_and_dropped_on_a_timeout(
    settings: AuditSettings, unique: str
) -> None:
    """HitConnections (query_api/cache.py): the hit script on connections of its own,
    reused, at most ``size``; connections Redis closed are replaced without a
    bypass; a Redis slower than the timeout is a bypass (MongoDB) and its
    connection is dropped; a NOSCRIPT reply (script cache flushed) is answered by
    loading the script, the connection kept."""
    from redis.asyncio import BlockingConnectionPool

    from query_api.cache import HitConnections, ReadCache

    pool = BlockingConnectionPool.from_url(settings.redis_url or "", socket_timeout=1.0)
    redis = Redis.from_pool(pool)
    hits = HitConnections(pool, 2, timeout=0.3, wait_seconds=0.5)
    cache = ReadCache(redis, 60, namespace=unique, hit_connections=hits)
    tenant = f"hits-{unique}"
    args = ("list", tenant, cache.tenant_scope(tenant), "q")

    async def loader() -> bytes:
        return b"page"

    try:
        assert await cache.get_or_load(*args, loader) == (b"page", "miss")
        await asyncio.sleep(cache.grace_seconds + 0.1)
        results = await asyncio.gather(*(cache.get_or_load(*args, loader) for _ in range(20)))
        assert set(results) == {(b"page", "hit")} and cache.loads == 1
        assert 1 <= len(hits._idle) <= 2  # reused, never more than size
        await redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await cache.get_or_load(*args, loader) == (b"page", "hit")  # reconnected
        assert len(hits._idle) == 1  # the closed ones dropped
        await redis.script_flush()  # a restarted Redis: NOSCRIPT, then loaded
        assert await cache.get_or_load(*args, loader) == (b"page", "hit")
        assert len(hits._idle) >= 1
        await redis.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        began = time.perf_counter()
        assert await cache.get_or_load(*args, loader) == (b"page", "bypass")
        assert time.perf_counter() - began < 0.9  # the hit's timeout, not the pause
        assert len(hits._idle) <= 1  # the interrupted connection was dropped
        await asyncio.sleep(1.2)  # the pause and the cache's retry pause are over
        assert await cache.get_or_load(*args, loader) == (b"page", "hit")
    finally:
        await cache.aclose()
        await redis.aclose()
