"""?wait=true wakes on the processor's stored-batch announcement (real Redis),
looks at the store once per announcement, and still finishes without Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace
from audit_events.settings import AuditSettings
from query_api.stored_waits import StoredWaits
from stream_processor.sinks import RedisInvalidator

pytestmark = pytest.mark.integration


class Store:
    def __init__(self) -> None:
        self.looks = 0
        self.stored = False

    async def done(self) -> bool:
        self.looks += 1
        return self.stored


def doc(tenant: str) -> dict[str, Any]:
    return {"tenant": tenant, "targets": [{"type": "invoice", "id": "1"}]}


async def test_wakes_on_the_announcement_only(settings: AuditSettings, unique: str) -> None:
    redis = Redis.from_url(settings.redis_url or "")
    waits = StoredWaits(redis)
    waits.start()
    try:
        for _ in range(100):
            if waits.subscribed:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the PSUBSCRIBE reached Redis
        store, tenant = Store(), f"t-{unique}"
        task = asyncio.create_task(waits.wait_until({tenant}, store.done, 5.0))
        await asyncio.sleep(0.6)
        assert store.looks == 1, "no polling between announcements"
        invalidator = RedisInvalidator(redis, namespace=cache_namespace(settings))
        await invalidator.bump([doc(f"other-{unique}")])  # another tenant: not woken
        await asyncio.sleep(0.2)
        assert store.looks == 1
        store.stored = True
        began = time.perf_counter()
        await invalidator.bump([doc(tenant)])  # the processor, after the batch is stored
        assert await task is True
        assert time.perf_counter() - began < 0.3, "woken by the announcement, not the fallback"
        assert store.looks == 2
    finally:
        await waits.stop()
        await redis.aclose()


async def test_without_pubsub_the_fallback_look_finishes_the_wait() -> None:
    store = Store()
    waits = StoredWaits(None)  # Redis away: looks every fallback_down_seconds
    task = asyncio.create_task(waits.wait_until({"acme"}, store.done, 5.0))
    await asyncio.sleep(0.6)
    assert 2 <= store.looks <= 4
    store.stored = True
    assert await asyncio.wait_for(task, 1.0) is True


async def test_times_out_false() -> None:
    store = Store()
    assert await StoredWaits(None).wait_until({"acme"}, store.done, 0.3) is False
