"""ReadCache: single-flight and Redis failures, on a tiny in-memory fake Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from query_api.cache import ReadCache

pytestmark = pytest.mark.unit


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise RedisConnectionError("down")

    async def mget(self, keys: list[str]) -> list[Any]:
        self._check()
        await asyncio.sleep(0)
        return [self.data.get(k) for k in keys]

    def register_script(self, script: str) -> Any:
        """query_api.cache.HIT_SCRIPT, in Python."""

        async def run(keys: list[str], args: list[str]) -> list[Any]:
            self._check()
            await asyncio.sleep(0)
            gens = [self.data.get(k) for k in keys]
            if any(g is None for g in gens):
                return []
            key = args[0] + ".".join(g.decode() for g in gens if g is not None) + args[1]
            value = self.data.get(key)
            return gens + ([value] if value is not None else [])

        return run

    async def get(self, key: str) -> Any:
        self._check()
        await asyncio.sleep(0)
        return self.data.get(key)

    async def set(self, key: str, value: bytes | int, ex: int, nx: bool = False) -> None:
        self._check()
        if nx and key in self.data:
            return
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()


async def test_concurrent_misses_load_once_then_hit() -> None:
    redis = FakeRedis()
    cache = ReadCache(redis, 60, namespace="n")  # type: ignore[arg-type]
    calls = 0

    async def load() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"page"

    results = await asyncio.gather(
        *(cache.get_or_load("list", "t", ["g"], "q", load) for _ in range(50))
    )
    assert calls == 1 and {r[0] for r in results} == {b"page"}
    assert await cache.get_or_load("list", "t", ["g"], "q", load) == (b"page", "hit")
    redis.data["g"] = b"1"  # the processor bumped the generation
    assert await cache.get_or_load("list", "t", ["g"], "q", load) == (b"page", "miss")
    assert calls == 2


async def test_loader_error_reaches_every_waiter_and_is_not_cached() -> None:
    cache = ReadCache(FakeRedis(), 60, namespace="n")  # type: ignore[arg-type]

    async def boom() -> bytes:
        await asyncio.sleep(0.01)
        raise RuntimeError("mongo down")

    results = await asyncio.gather(
        *(cache.get_or_load("get", "t", ["g"], "x", boom) for _ in range(3)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [RuntimeError] * 3

    async def ok() -> bytes:
        return b"v"

    assert await cache.get_or_load("get", "t", ["g"], "x", ok) == (b"v", "miss")


async def test_redis_down_bypasses_and_a_disconnect_does_not_cancel_the_load() -> None:
    redis = FakeRedis()
    redis.down = True
    cache = ReadCache(redis, 60, namespace="n")  # type: ignore[arg-type]
    loading, release = asyncio.Event(), asyncio.Event()
    release.set()  # the bypass load runs through

    async def load() -> bytes:
        loading.set()
        await release.wait()
        return b"fresh"

    assert await cache.get_or_load("list", "t", ["g"], "q", load) == (b"fresh", "bypass")
    redis.down = False
    cache._redis_down_until = 0.0
    loading.clear()
    release.clear()
    leader = asyncio.ensure_future(cache.get_or_load("list", "t", ["g"], "q2", load))
    follower = asyncio.ensure_future(cache.get_or_load("list", "t", ["g"], "q2", load))
    await asyncio.wait_for(loading.wait(), 5)  # the leader's load is in flight
    leader.cancel()  # the first client disconnects
    release.set()
    assert await follower == (b"fresh", "miss")
