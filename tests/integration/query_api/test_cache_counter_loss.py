"""Cache generations survive counter loss (issue 21 item 4).

The no-stale-reads design keys cached reads on per-scope counters. When a counter
is lost (Redis flushed or restarted without persistence, an eviction, the
counter's expiry) and then counts up again, a counter that restarted at 0 would
reach values that entries cached before the loss are keyed on: stale reads for up
to the TTL. Counters now restart at a fresh random value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from quart import Quart
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace, target_generation, tenant_generation
from audit_events.codec import content_hash, event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from query_api.services import Services
from query_api.state import api_state
from stream_processor.sinks import RedisInvalidator
from tests.helpers import make_event

pytestmark = pytest.mark.integration


class Writer:
    """Stores events as the processor does: insert, then the real generation bump."""

    def __init__(self, services: Services, settings: AuditSettings) -> None:
        self.events = services.mongo[settings.mongo_db][EVENTS_COLLECTION]
        self.redis: Redis = services.redis
        self.invalidator = RedisInvalidator(
            services.redis, settings.cache_ttl_seconds, namespace=cache_namespace(settings)
        )

    async def put(self, n: int, tenant: str) -> None:
        event = make_event(n, tenant=tenant)
        doc: dict[str, Any] = {
            **event_to_document(event, datetime.now(UTC)),
            "content_hash": content_hash(event),
        }
        await self.events.insert_one(doc)
        await self.invalidator.bump([doc])


@pytest.fixture
def services(api: Quart) -> Services:
    """The in-process API's clients (MongoDB, Redis, cache)."""
    services = api_state(api).services
    assert services is not None
    return services


@pytest.fixture
def writer(services: Services, settings: AuditSettings) -> Writer:
    return Writer(services, settings)


@pytest.fixture
def tenant(unique: str) -> str:
    return f"t-{unique}"


async def _ids(client: Any, tenant: str, auth: dict[str, str]) -> tuple[list[str], str]:
    resp = await client.get("/v1/events", headers=auth)
    assert resp.status_code == 200
    body = await resp.get_json()
    return sorted(e["id"] for e in body["data"]), resp.headers["X-Cache"]


async def test_flush_between_a_read_and_its_cache_set_gives_no_stale_read(
    api: Quart,
    services: Services,
    writer: Writer,
    tenant: str,
    auth: Callable[..., dict[str, str]],
) -> None:
    headers = auth(tenant)
    await writer.put(1, tenant)
    client = api.test_client()

    async def redis_lost_and_a_write(key: str) -> None:
        # The read already has event 1 from MongoDB and is about to cache it.
        services.cache.after_load = None
        await services.redis.flushdb()  # restart without persistence / FLUSHDB
        await writer.put(2, tenant)  # the processor's next batch

    services.cache.after_load = redis_lost_and_a_write
    first, state = await _ids(client, tenant, headers)
    assert (first, state) == ([f"{tenant}-000001"], "miss")
    # With counters restarting at 0, the write brought the tenant's counter back to
    # the value the first read was keyed on, and this read was its stale entry.
    again, state = await _ids(client, tenant, headers)
    assert again == [f"{tenant}-000001", f"{tenant}-000002"], state


async def test_an_evicted_counter_does_not_revive_old_entries(
    api: Quart,
    services: Services,
    writer: Writer,
    tenant: str,
    auth: Callable[..., dict[str, str]],
) -> None:
    headers = auth(tenant)
    client = api.test_client()
    await writer.put(1, tenant)
    assert (await _ids(client, tenant, headers))[1] == "miss"
    assert (await _ids(client, tenant, headers))[1] == "hit"
    # allkeys-lru (or the counter's own expiry) drops the counter, not the entries.
    await services.redis.delete(tenant_generation(services.cache.namespace, tenant))
    await writer.put(2, tenant)
    ids, state = await _ids(client, tenant, headers)
    assert ids == [f"{tenant}-000001", f"{tenant}-000002"], state
    assert state == "miss"


async def test_counters_expire_so_their_memory_is_bounded(
    api: Quart,
    settings: AuditSettings,
    unique: str,
    services: Services,
    writer: Writer,
    tenant: str,
    auth: Callable[..., dict[str, str]],
) -> None:
    await writer.put(1, tenant)
    ttl = 2 * settings.cache_ttl_seconds
    event = make_event(1, tenant=tenant)
    target = event.targets[0]
    ns = cache_namespace(settings)
    for key in (
        tenant_generation(ns, tenant),
        target_generation(ns, tenant, target.type, target.id),
    ):
        assert 0 < await services.redis.ttl(key) <= ttl
        assert int(await services.redis.get(key)) > 2**61  # a random start, not 1
    # A reader that finds no counter creates one (random, with the same expiry).
    reader_tenant = f"r-{unique}"
    await _ids(api.test_client(), reader_tenant, auth(reader_tenant))
    assert 0 < await services.redis.ttl(tenant_generation(ns, reader_tenant)) <= ttl
