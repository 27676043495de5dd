"""ReadCache: single-flight and Redis failures, on a tiny in-memory fake Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from audit_events.cache_keys import query_key
from query_api.cache import LOCK_SUFFIX, RELEASE_SCRIPT, ReadCache

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
        """query_api.cache.HIT_SCRIPT and RELEASE_SCRIPT, in Python."""
        if script == RELEASE_SCRIPT:

            async def release(keys: list[str], args: list[str]) -> int:
                self._check()
                if self.data.get(keys[0]) == args[0].encode():
                    del self.data[keys[0]]
                    return 1
                return 0

            return release

        async def run(keys: list[str], args: list[Any]) -> Any:
            self._check()
            await asyncio.sleep(0)
            gens = [self.data.get(k) for k in keys]
            if any(g is None for g in gens):
                return []
            key = args[0] + ".".join(g.decode() for g in gens if g is not None) + args[1]
            value = self.data.get(key)
            if value is None:
                return gens
            if key == args[3]:  # the caller holds it (no TTLs here: never due for refresh)
                return 1
            return [*gens, value, -1]

        run.sha = "hit"  # type: ignore[attr-defined]
        self.scripts = {"hit": run}
        return run

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: str) -> Any:
        if sha not in self.scripts:
            raise NoScriptError("No matching script")
        run = self.scripts[sha]
        return await run(list(keys_and_args[:numkeys]), list(keys_and_args[numkeys:]))

    async def get(self, key: str) -> Any:
        self._check()
        await asyncio.sleep(0)
        return self.data.get(key)

    async def set(
        self, key: str, value: bytes | int | str, ex: int = 0, px: int = 0, nx: bool = False
    ) -> bool | None:
        self._check()
        if nx and key in self.data:
            return None
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()
        return True

    async def exists(self, key: str) -> int:
        self._check()
        return int(key in self.data)


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


async def test_two_processes_share_one_load_through_the_redis_lock() -> None:
    """Two ReadCaches (two API processes) on one Redis: a cold burst loads once."""
    redis = FakeRedis()
    caches = [ReadCache(redis, 60, namespace="n") for _ in range(2)]  # type: ignore[arg-type]
    calls = 0

    async def load() -> bytes:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return b"page"

    results = await asyncio.gather(
        *(caches[i % 2].get_or_load("list", "t", ["g"], "q", load) for i in range(20))
    )
    assert calls == 1 and {r for r in results} == {(b"page", "miss")}
    assert sum(c.loads for c in caches) == 1 and sum(c.shared for c in caches) == 1
    assert not [k for k in redis.data if k.endswith(":loading")]  # released


async def test_a_crashed_loaders_lock_holds_a_reader_up_only_for_the_lock_time() -> None:
    redis = FakeRedis()
    cache = ReadCache(redis, 60, namespace="n")  # type: ignore[arg-type]
    cache.lock_seconds = 0.2
    await cache.get_or_load("list", "t", ["g"], "warm", _value(b"x"))  # creates the counter
    key = query_key("n", "list", "t", [int(redis.data["g"])], "q")
    # A process took the lock of "q" and died (the real lock expires after lock_seconds).
    redis.data[key + LOCK_SUFFIX] = b"someone-else"
    started = asyncio.get_running_loop().time()
    assert await cache.get_or_load("list", "t", ["g"], "q", _value(b"mine")) == (b"mine", "miss")
    assert 0.2 <= asyncio.get_running_loop().time() - started < 1.0


async def test_a_failed_loaders_released_lock_lets_the_waiter_load() -> None:
    redis = FakeRedis()
    first, second = (ReadCache(redis, 60, namespace="n") for _ in range(2))  # type: ignore[arg-type]
    loading = asyncio.Event()

    async def boom() -> bytes:
        loading.set()
        await asyncio.sleep(0.05)
        raise RuntimeError("mongo down")

    failing = asyncio.ensure_future(first.get_or_load("list", "t", ["g"], "q", boom))
    await loading.wait()
    started = asyncio.get_running_loop().time()
    assert await second.get_or_load("list", "t", ["g"], "q", _value(b"ok")) == (b"ok", "miss")
    assert asyncio.get_running_loop().time() - started < 1.0  # not the 5 s lock time
    with pytest.raises(RuntimeError):
        await failing


def _value(value: bytes) -> Any:
    async def load() -> bytes:
        return value

    return load


async def test_a_server_without_the_hit_script_falls_back_to_loading_it() -> None:
    redis = FakeRedis()
    cache = ReadCache(redis, 60, namespace="n")  # type: ignore[arg-type]
    assert await cache.get_or_load("list", "t", ["g"], "q", _value(b"v")) == (b"v", "miss")
    del redis.scripts["hit"]  # e.g. Redis restarted: EVALSHA answers NOSCRIPT
    assert await cache.get_or_load("list", "t", ["g"], "q", _value(b"w")) == (b"v", "hit")
