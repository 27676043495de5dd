"""Auditing of reads through the whole pipeline (issue 17): API -> Kafka -> processor
-> MongoDB. Each read (list, get, history, export, verify) stores exactly one
``auditstream.log.*`` event, signed by the API and accepted by the processor; reads
of those events store none (no loop); the setting turns it off; a stored read
event does not turn the next cached read into a miss."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart import Quart
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from query_api.app import create_app
from query_api.auth import mint_token
from tests.conftest import ProcessorProcess
from tests.helpers import event_body, eventually

pytestmark = pytest.mark.integration
READS = {"action": {"$regex": "^auditstream\\.log\\."}}


@pytest.fixture
async def audited(settings: AuditSettings) -> AsyncIterator[Quart]:
    """The API with read auditing on (the shared test settings turn it off)."""
    app = create_app(settings.model_copy(update={"read_audit": True}))
    async with app.test_app():
        yield app


def reader(settings: AuditSettings, subject: str = "auditor-1") -> dict[str, str]:
    token = mint_token(settings, subject=subject, tenant="acme", scopes=["events:read"])
    return {"Authorization": f"Bearer {token}", "User-Agent": "read-audit-test"}


async def read_events(store: AsyncCollection[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d async for d in store.find({"tenant": "acme", **READS}).sort("seq", 1)]


async def post(
    store: AsyncCollection[dict[str, Any]], client: Client, h: Any, events: list[dict[str, Any]]
) -> None:
    """Publish ``events`` and wait until the processor stored them all."""
    resp = await client.post("/v1/events", json={"events": events}, headers=h)
    assert resp.status_code == 202
    ids = [e["id"] for e in events]

    async def stored() -> bool:
        return await store.count_documents({"tenant": "acme", "id": {"$in": ids}}) == len(ids)

    await eventually(stored, timeout=90, what=f"{ids} stored")


async def settle(store: AsyncCollection[dict[str, Any]], client: Client, h: Any) -> int:
    """Post a sentinel and wait for it: once stored, the processor is past every
    read event published before it (one tenant, one partition, in order)."""
    sentinel = event_body(999, id=f"sentinel-{await store.count_documents({})}")
    await post(store, client, h, [sentinel])
    return len(await read_events(store))


async def test_each_read_stores_one_event_and_reads_of_them_none(
    audited: Quart,
    settings: AuditSettings,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    client = audited.test_client()
    writer = {
        "Authorization": "Bearer "
        + mint_token(settings, subject="svc", tenant="acme", scopes=["events:write"])
    }
    events = [event_body(n, targets=[{"type": "invoice", "id": "42"}]) for n in range(4)]
    await post(store, client, writer, events)
    h = reader(settings)

    reads = [
        "/v1/events?actor=alice&limit=1",
        "/v1/events/acme-000001",
        "/v1/targets/invoice/42/history?action=invoice.update",
        "/v1/events/export?format=ndjson&actor=bob",
        "/v1/verify",
    ]
    for url in reads:
        resp = await client.get(url, headers=h)
        assert resp.status_code == 200, (url, await resp.get_data())
        await resp.get_data()

    async def five() -> list[dict[str, Any]] | None:
        found = await read_events(store)
        return found if len(found) >= 5 else None

    stored = await eventually(five, timeout=60, what="five read events stored")
    assert await settle(store, client, writer) == 5  # exactly one per read
    got = [(d["action"], d["metadata"]["read"]["kind"]) for d in stored]
    assert got == [
        ("auditstream.log.viewed", "list"),
        ("auditstream.log.viewed", "get"),
        ("auditstream.log.viewed", "history"),
        ("auditstream.log.exported", "export"),
        ("auditstream.log.verified", "verify"),
    ]
    for doc in stored:
        assert doc["actor"] == {"id": "auditor-1", "type": "api_client"}
        assert doc["tenant"] == "acme" and doc["context"]["user_agent"] == "read-audit-test"
        assert doc["metadata"]["proof"]["sig"]  # the API's proof; the processor accepted it
    lst, get, hist, exp, ver = (d["metadata"]["read"] for d in stored)
    assert lst["filters"] == {"actor": "alice"} and lst["count"] == 1
    assert lst["page"] == {"limit": 1, "order": "desc", "cursor": False}
    assert get["event_id"] == "acme-000001" and get["count"] == 1
    assert hist["target"] == {"type": "invoice", "id": "42"}
    assert hist["filters"] == {"action": "invoice.update"} and hist["count"] == 2
    assert exp["filters"] == {"actor": "bob"} and exp["count"] == 2 and exp["complete"]
    assert exp["format"] == "ndjson"
    # the chain walked: the 4 events and the read events stored before it ran
    assert 4 <= ver["count"] <= 8 and ver["ok"] is True

    # No loop: reading the read events (list by action, one of them, their export)
    # stores nothing; the viewer's action filter finds them like any event.
    listed = await client.get("/v1/events?action=auditstream.log.*", headers=h)
    body = await listed.get_json()
    assert sorted(e["id"] for e in body["data"]) == sorted(d["id"] for d in stored)
    one = await client.get(f"/v1/events/{stored[0]['id']}", headers=h)
    assert one.status_code == 200
    exported = await client.get(
        "/v1/events/export?format=ndjson&action=auditstream.log.viewed", headers=h
    )
    assert len((await exported.get_data()).splitlines()) == 3
    assert await settle(store, client, writer) == 5

    # The chain with read events in it still verifies (the API's verifier accepts them).
    resp = await client.get("/v1/verify", headers=h)
    assert (await resp.get_json())["ok"] is True


async def test_a_stored_read_event_leaves_cached_reads_cached(
    audited: Quart,
    settings: AuditSettings,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    client = audited.test_client()
    writer = {
        "Authorization": "Bearer "
        + mint_token(settings, subject="svc", tenant="acme", scopes=["events:write"])
    }
    await post(store, client, writer, [event_body(1)])
    h = reader(settings)
    first = await client.get("/v1/events", headers=h)
    assert first.headers["X-Cache"] == "miss"

    async def stored() -> bool:
        return len(await read_events(store)) >= 1

    await eventually(stored, timeout=60, what="the list's read event stored")
    await asyncio.sleep(0.5)  # past the processor's generation bump
    again = await client.get("/v1/events", headers=h)
    assert again.headers["X-Cache"] == "hit"  # the read event did not invalidate it
    fresh = await client.get("/v1/events?action=auditstream.log.viewed", headers=h)
    assert len((await fresh.get_json())["data"]) >= 1  # lists of read events are fresh


async def test_off_the_setting_stores_no_read_events(
    client: Client,
    settings: AuditSettings,
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    assert settings.read_audit is False  # the shared test settings (tests/conftest.py)
    processors()
    writer = {
        "Authorization": "Bearer "
        + mint_token(settings, subject="svc", tenant="acme", scopes=["events:write"])
    }
    await post(store, client, writer, [event_body(1)])
    h = reader(settings)
    for url in ("/v1/events", "/v1/events/acme-000001", "/v1/events/export", "/v1/verify"):
        resp = await client.get(url, headers=h)
        assert resp.status_code == 200
        await resp.get_data()
    assert await settle(store, client, writer) == 0
