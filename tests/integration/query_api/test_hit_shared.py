"""Concurrent hits of one page share one Redis round trip (issue 18), never an
older one: ``HitConnections.call_shared`` sends after every caller it answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from audit_events.settings import AuditSettings
from query_api.cache import HitConnections, ReadCache

pytestmark = pytest.mark.integration


@pytest.fixture
async def cache(
    settings: AuditSettings, unique: str
) -> AsyncIterator[tuple[ReadCache, Redis, list[Any]]]:
    """A cache with its own hit connections on the real Redis; the round trips sent."""
    pool = BlockingConnectionPool.from_url(settings.redis_url or "", socket_timeout=2.0)
    redis = Redis.from_pool(pool)
    hits = HitConnections(pool, 8)
    cache = ReadCache(redis, 60, namespace=unique, hit_connections=hits)
    sent: list[Any] = []
    call = hits.call_packed

    async def recorded(command: list[bytes]) -> object:
        sent.append(command)
        return await call(command)

    hits.call_packed = recorded  # type: ignore[method-assign]
    try:
        yield cache, redis, sent
    finally:
        await cache.aclose()
        await redis.aclose()


async def primed(cache_: ReadCache, args: Any, loader: Any, page: bytes) -> None:
    """Cache ``page`` (a miss) and wait out the load's single-flight grace."""
    assert await cache_.get_or_load(*args, loader) == (page, "miss")
    await asyncio.sleep(cache_.grace_seconds + 0.1)


async def test_hits_in_one_loop_iteration_share_one_round_trip(
    cache: tuple[ReadCache, Redis, list[Any]], unique: str
) -> None:
    cache_, _, sent = cache
    tenant = f"shared-{unique}"
    args = ("list", tenant, cache_.tenant_scope(tenant), "q")

    async def loader() -> bytes:
        return b"page"

    await primed(cache_, args, loader, b"page")
    sent.clear()
    results = await asyncio.gather(*(cache_.get_or_load(*args, loader) for _ in range(10)))
    assert set(results) == {(b"page", "hit")} and cache_.hits >= 10
    assert len(sent) == 1  # one script run for the ten
    assert await cache_.get_or_load(*args, loader) == (b"page", "hit")  # alone: its own
    assert len(sent) == 2


async def test_a_hit_after_the_send_does_not_join_it_and_sees_a_bump(
    cache: tuple[ReadCache, Redis, list[Any]], unique: str
) -> None:
    """A caller that asks once the command is on its way gets a round trip of its
    own: a read after a write's bump is never answered by a check made before it."""
    cache_, redis, sent = cache
    tenant = f"after-{unique}"
    scope = cache_.tenant_scope(tenant)
    args = ("list", tenant, scope, "q")
    pages = iter([b"old", b"new"])

    async def loader() -> bytes:
        return next(pages)

    await primed(cache_, args, loader, b"old")
    sent.clear()
    first = asyncio.ensure_future(cache_.get_or_load(*args, loader))
    for _ in range(100):  # until the first hit's command is sent
        if sent:
            break
        await asyncio.sleep(0)
    assert sent
    await redis.incr(scope[0])  # a stored batch bumps the tenant's generation
    second = await cache_.get_or_load(*args, loader)
    assert await first == (b"old", "hit")
    assert second == (b"new", "miss") and len(sent) == 2


async def test_a_caller_that_goes_away_leaves_the_round_trip_to_those_who_joined(
    cache: tuple[ReadCache, Redis, list[Any]], unique: str
) -> None:
    cache_, _, sent = cache
    tenant = f"gone-{unique}"
    args = ("list", tenant, cache_.tenant_scope(tenant), "q")

    async def loader() -> bytes:
        return b"page"

    await primed(cache_, args, loader, b"page")
    sent.clear()
    first = asyncio.ensure_future(cache_.get_or_load(*args, loader))
    others = [asyncio.ensure_future(cache_.get_or_load(*args, loader)) for _ in range(3)]
    await asyncio.sleep(0)  # every one of them is waiting on the first one's command
    first.cancel()  # its client went away before the command was sent
    assert await asyncio.gather(*others) == [(b"page", "hit")] * 3
    assert first.cancelled() and len(sent) == 1
    assert cache_.bypasses == 0  # not taken for a Redis failure
