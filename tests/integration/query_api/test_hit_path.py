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
