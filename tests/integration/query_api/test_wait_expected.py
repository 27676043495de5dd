"""``POST ?wait=true`` registers its events before it publishes them and is answered by
the processor's announcement (real Redis, the processor's own invalidator): no look
at the store when the announcement names every event with the content hash sent; a
look when it names none, another hash, or when announcements may have been missed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace
from audit_events.notify import MAX_NAMED_EVENTS
from audit_events.settings import AuditSettings
from query_api.stored_waits import Confirmed, StoredWaits
from stream_processor.sinks import RedisInvalidator

pytestmark = pytest.mark.integration


class Store:
    def __init__(self) -> None:
        self.looks = 0
        self.stored = False

    async def done(self) -> bool:
        self.looks += 1
        return self.stored


def doc(tenant: str, event_id: str, digest: str) -> dict[str, Any]:
    return {"tenant": tenant, "id": event_id, "content_hash": digest, "targets": []}


@pytest.fixture
async def redis(settings: AuditSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url or "")
    yield client
    await client.aclose()


@pytest.fixture
async def waits(redis: Redis) -> AsyncIterator[StoredWaits]:
    waits = StoredWaits(redis)
    waits.fallback_seconds = 30.0  # no fallback look within these tests
    waits.start()
    for _ in range(250):
        if waits.subscribed:  # Redis confirmed the subscription
            break
        await asyncio.sleep(0.02)
    assert waits.subscribed
    yield waits
    await waits.stop()


def processor(redis: Redis, settings: AuditSettings) -> RedisInvalidator:
    return RedisInvalidator(redis, namespace=cache_namespace(settings))


async def test_named_with_the_sent_hashes_the_events_need_no_look(
    waits: StoredWaits, redis: Redis, settings: AuditSettings, unique: str
) -> None:
    tenant, store = f"t-{unique}", Store()
    wanted = {(tenant, "e1"): "h1", (tenant, "e2"): "h2"}
    with waits.expect(wanted) as expected:  # before the publish
        task = asyncio.create_task(waits.wait_expected(expected, store.done, 5.0))
        await asyncio.sleep(0.2)
        bump = processor(redis, settings).bump
        await bump([doc(tenant, "e0", "h0")], stored=[doc(tenant, "e0", "h0")])  # earlier one
        await bump([doc(f"o-{unique}", "e1", "h1")], stored=[doc(f"o-{unique}", "e1", "h1")])
        await asyncio.sleep(0.2)
        assert not task.done()
        await bump([doc(tenant, "e1", "h1")], stored=[doc(tenant, "e1", "h1")])
        await asyncio.sleep(0.2)
        assert not task.done(), "e2 is not stored yet"
        await bump([doc(tenant, "e2", "h2")], stored=[doc(tenant, "e2", "h2")])
        assert await asyncio.wait_for(task, 5.0) is Confirmed.ANNOUNCED
    assert store.looks == 0, "neither before the first announcement nor after one"


@pytest.mark.parametrize("named", ["none", "another hash", "too many"])
async def test_an_announcement_that_does_not_confirm_the_events_makes_them_look(
    waits: StoredWaits, redis: Redis, settings: AuditSettings, unique: str, named: str
) -> None:
    tenant, store = f"t-{unique}", Store()
    with waits.expect({(tenant, "e1"): "h1"}) as expected:
        task = asyncio.create_task(waits.wait_expected(expected, store.done, 5.0))
        await asyncio.sleep(0.2)
        store.stored = True  # e.g. stored masked: the look compares it redacted
        bump = processor(redis, settings).bump
        if named == "none":  # a purge's or a replay's bump, or an older processor
            await bump([doc(tenant, "e1", "h1")])
        elif named == "another hash":
            await bump([doc(tenant, "e1", "masked")], stored=[doc(tenant, "e1", "masked")])
        else:
            many = [doc(tenant, f"x{i}", "h") for i in range(MAX_NAMED_EVENTS)]
            await bump(many, stored=[*many, doc(tenant, "e1", "h1")])
        assert await asyncio.wait_for(task, 5.0) is Confirmed.LOOKED
    assert store.looks == 1


async def test_announcements_name_the_stored_events_of_each_tenant_only(
    redis: Redis, settings: AuditSettings, unique: str
) -> None:
    a, b = f"a-{unique}", f"b-{unique}"
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(f"*:stored:*-{unique}")
    try:
        await asyncio.sleep(0.1)
        conflict = doc(a, "e2", "other content")  # dead-lettered: never stored
        documents = [doc(a, "e1", "h1"), conflict, doc(b, "e3", "h3")]
        stored = [d for d in documents if d is not conflict]
        await processor(redis, settings).bump(documents, stored=stored)
        got: dict[str, bytes] = {}
        for _ in range(100):
            msg = await pubsub.get_message(timeout=0.1)
            if msg is not None:
                got[msg["channel"].decode().rsplit(":", 1)[1]] = msg["data"]
            if len(got) == 2:
                break
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert got == {a: b'{"stored":{"e1":"h1"}}', b: b'{"stored":{"e3":"h3"}}'}


async def test_without_the_subscription_the_events_look_at_once_and_on_the_fallback() -> None:
    store = StoredWaits(None)  # Redis away: announcements cannot be relied on
    looks = Store()
    with store.expect({("acme", "e1"): "h1"}) as expected:
        task = asyncio.create_task(store.wait_expected(expected, looks.done, 5.0))
        await asyncio.sleep(0.05)
        assert looks.looks == 1, "at once"
        await asyncio.sleep(0.5)
        assert 2 <= looks.looks <= 4
        looks.stored = True
        assert await asyncio.wait_for(task, 1.0) is Confirmed.LOOKED
