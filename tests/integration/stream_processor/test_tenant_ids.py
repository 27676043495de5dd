"""Event identity is (tenant, id): HTTP → Kafka → a real processor → SecantusDB → API.

The same id in two tenants is two events, each readable and correctable only by
its own tenant, and no answer tells one tenant that another used the id. The
same tenant reusing an id for another content is dead-lettered (reason
``duplicate id with different content``, counted by a metric); an identical
redelivery is a duplicate and changes nothing.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from auditstream.embedded import free_port
from tests.conftest import ProcessorProcess
from tests.helpers import eventually, scrape

pytestmark = pytest.mark.integration

ADMIN = "events:read events:write events:admin"
REASON = "duplicate id with different content"


def order(tenant: str, description: str) -> dict[str, Any]:
    return {
        "id": "order-123",
        "tenant": tenant,
        "action": "order.create",
        "occurred_at": "2026-01-01T00:00:00Z",
        "actor": {"id": f"{tenant}-clerk", "type": "user"},
        "targets": [{"type": "order", "id": "123"}],
        "description": description,
    }


async def post_stored(client: Client, event: dict[str, Any], headers: dict[str, str]) -> None:
    """POST ?wait=true; the first batch may outwait the group forming (202): then poll."""
    resp = await client.post("/v1/events?wait=true", json=event, headers=headers)
    assert resp.status_code in (201, 202), await resp.get_data()
    if resp.status_code == 202:

        async def readable() -> bool:
            got = await client.get(f"/v1/events/{event['id']}", headers=headers)
            return got.status_code == 200

        await eventually(readable, timeout=90)


def letter_bytes(letter: dict[str, Any]) -> bytes:
    """The dead-lettered record's bytes, as the DLQ body encodes them."""
    if letter.get("original_encoding") == "base64":
        return base64.b64decode(letter["original"])
    return str(letter["original"]).encode("latin-1")


async def dead_letters(settings: AuditSettings, quiet: float = 2.0) -> list[dict[str, Any]]:
    """Every DLQ record, read until the topic stays quiet for ``quiet`` seconds."""
    consumer = AIOKafkaConsumer(
        settings.topic_dlq,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                out += [orjson.loads(r.value) for r in records if r.value is not None]
                last = time.monotonic()
    finally:
        await consumer.stop()
    return out


async def test_the_same_id_in_two_tenants_is_two_events_each_its_own(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    acme, globex = auth("acme", ADMIN), auth("globex", ADMIN)
    await post_stored(client, order("acme", "acme's order"), acme)

    resp = await client.post(
        "/v1/events?wait=true", json=order("globex", "globex's order"), headers=globex
    )
    assert resp.status_code == 201  # stored, not "already there"
    assert await resp.get_json() == {"ids": ["order-123"], "status": "stored"}

    for tenant, headers in (("acme", acme), ("globex", globex)):
        got = await client.get("/v1/events/order-123", headers=headers)
        assert got.status_code == 200
        body = await got.get_json()
        assert (body["id"], body["tenant"], body["description"]) == (
            "order-123",
            tenant,
            f"{tenant}'s order",
        )
        other = "globex" if tenant == "acme" else "acme"
        assert other not in (await got.get_data()).decode()  # nothing of the other tenant
        assert body["seq"] == 1  # each tenant's chain starts at its own event
        listed = await (await client.get("/v1/events", headers=headers)).get_json()
        assert [(e["id"], e["tenant"]) for e in listed["data"]] == [("order-123", tenant)]

    # Correctable only by its own tenant: globex erases its order, acme's stays.
    erased = await client.delete("/v1/events/order-123?wait=true&reason=test", headers=globex)
    assert erased.status_code == 204

    async def gone() -> bool:  # the cache generation is bumped just after the erasure
        return (await client.get("/v1/events/order-123", headers=globex)).status_code == 410

    await eventually(gone, timeout=30)
    kept = await client.get("/v1/events/order-123", headers=acme)
    assert kept.status_code == 200 and (await kept.get_json())["description"] == "acme's order"
    assert await store.count_documents({"id": "order-123"}) == 2


async def test_same_tenant_same_id_other_content_is_dead_lettered_and_counted(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    port = free_port()
    processors(AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port))
    headers = auth("acme")
    original = order("acme", "the original")
    await post_stored(client, original, headers)
    before: dict[str, Any] | None = None

    async def stored() -> bool:
        nonlocal before
        before = await store.find_one({"tenant": "acme", "id": "order-123"})
        return before is not None

    await eventually(stored, timeout=30)

    reused = order("acme", "another order, same id")
    resp = await client.post("/v1/events?wait=true", json=reused, headers=headers)
    assert resp.status_code == 202  # never stored: the wait does not claim it was

    async def counted() -> bool:
        return scrape(port).get("auditstream_duplicate_id_conflicts_total") == 1

    await eventually(counted, timeout=60)
    again = await client.post("/v1/events?wait=true", json=original, headers=headers)
    assert again.status_code == 201  # the identical event is the one stored

    async def duplicate_counted() -> bool:
        return scrape(port).get("auditstream_events_duplicate_total") == 1

    await eventually(duplicate_counted, timeout=60)
    letters = await dead_letters(settings)
    assert [d["reason"] for d in letters] == [REASON]
    letter = orjson.loads(letter_bytes(letters[0]))  # the original record
    assert (letter["id"], letter["tenant"], letter["description"]) == (
        "order-123",
        "acme",
        "another order, same id",
    )
    assert await store.find_one({"tenant": "acme", "id": "order-123"}) == before
    assert await store.count_documents({"tenant": "acme"}) == 1
    metrics = scrape(port)
    assert metrics["auditstream_duplicate_id_conflicts_total"] == 1
    assert metrics["auditstream_events_stored_total"] == 1
