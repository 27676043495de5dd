"""``GET /v1/targets/{type}/{id}/history``: timeline, pagination, ``as_of``, caching."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace, target_generation
from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def seed_events(
    store: AsyncCollection[dict[str, Any]], events: list[dict[str, Any]]
) -> list[str]:
    """Store ``events`` directly (as the processor would, minus the chain); their ids."""
    docs = []
    for raw in events:
        event = AuditEvent.model_validate(raw)
        docs.append(event_to_document(event, event.occurred_at + timedelta(seconds=1)))
    await store.insert_many(docs)
    return [d["id"] for d in docs]


def invoice_events(tenant: str) -> list[dict[str, Any]]:
    inv = {"type": "invoice", "id": "42", "name": "Invoice 42"}
    return [
        {
            "id": "h1",
            "tenant": tenant,
            "action": "invoice.create",
            "crud": "c",
            "occurred_at": T0.isoformat(),
            "actor": {"id": "alice"},
            "targets": [inv, {"type": "customer", "id": "c7"}],
            "changes": {"status": {"new": "draft"}, "total": {"new": 10}},
        },
        {
            "id": "h2",
            "tenant": tenant,
            "action": "invoice.update",
            "crud": "u",
            "occurred_at": (T0 + timedelta(hours=1)).isoformat(),
            "actor": {"id": "bob"},
            "targets": [inv],
            "changes": {"total": {"old": 10, "new": 12}},
        },
        {
            "id": "h3",
            "tenant": tenant,
            "action": "invoice.update",
            "crud": "u",
            "outcome": "denied",
            "occurred_at": (T0 + timedelta(hours=2)).isoformat(),
            "actor": {"id": "mallory"},
            "targets": [inv],
            "changes": {"total": {"old": 12, "new": 0}},
        },
        {
            "id": "h4",
            "tenant": tenant,
            "action": "invoice.pay",
            "crud": "u",
            "occurred_at": (T0 + timedelta(hours=3)).isoformat(),
            "actor": {"id": "alice"},
            "targets": [inv],
            "changes": {"status": {"old": "draft", "new": "paid"}},
        },
        {
            "id": "other",
            "tenant": tenant,
            "action": "invoice.update",
            "occurred_at": (T0 + timedelta(hours=1)).isoformat(),
            "targets": [{"type": "invoice", "id": "43"}],
            "changes": {"total": {"old": 1, "new": 2}},
        },
    ]


@pytest.fixture
def tenant(unique: str) -> str:
    # A tenant of its own: the session's Redis is shared, cache keys are per tenant.
    return f"hist-{unique}"


async def test_timeline_is_oldest_first_with_diffs(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, invoice_events(tenant))
    resp = await client.get("/v1/targets/invoice/42/history", headers=auth(tenant))
    assert resp.status_code == 200
    body = await resp.get_json()
    assert body["target"] == {"type": "invoice", "id": "42"}
    assert [e["id"] for e in body["data"]] == ["h1", "h2", "h3", "h4"]
    assert body["data"][1]["changes"] == {"total": {"old": 10, "new": 12}}
    assert body["next_cursor"] is None

    desc = await client.get("/v1/targets/invoice/42/history?order=desc", headers=auth(tenant))
    assert [e["id"] for e in (await desc.get_json())["data"]] == ["h4", "h3", "h2", "h1"]
    customer = await client.get("/v1/targets/customer/c7/history", headers=auth(tenant))
    assert [e["id"] for e in (await customer.get_json())["data"]] == ["h1"]
    filtered = await client.get("/v1/targets/invoice/42/history?actor=alice", headers=auth(tenant))
    assert [e["id"] for e in (await filtered.get_json())["data"]] == ["h1", "h4"]


async def test_timeline_pages_with_the_cursor(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, invoice_events(tenant))
    seen: list[str] = []
    url = "/v1/targets/invoice/42/history?limit=3"
    while True:
        body = await (await client.get(url, headers=auth(tenant))).get_json()
        seen += [e["id"] for e in body["data"]]
        if body["next_cursor"] is None:
            break
        url = f"/v1/targets/invoice/42/history?limit=3&cursor={body['next_cursor']}"
    assert seen == ["h1", "h2", "h3", "h4"]


async def test_as_of_folds_the_changes(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, invoice_events(tenant))

    async def state(at: datetime) -> dict[str, Any]:
        when = at.isoformat().replace("+00:00", "Z")
        resp = await client.get(
            f"/v1/targets/invoice/42/history?as_of={when}", headers=auth(tenant)
        )
        assert resp.status_code == 200
        body: dict[str, Any] = await resp.get_json()
        return body

    before = await state(T0 - timedelta(minutes=1))
    assert before["state"] == {} and before["events_applied"] == 0
    mid = await state(T0 + timedelta(hours=2, minutes=30))  # after the denied update
    assert mid["state"] == {"status": "draft", "total": 12}
    assert mid["events_applied"] == 2 and mid["events_skipped"] == 1
    assert mid["fields"]["total"]["event_id"] == "h2"
    end = await state(T0 + timedelta(days=1))
    assert end["state"] == {"status": "paid", "total": 12}
    assert end["last_event_id"] == "h4" and end["deleted"] is False


async def test_bad_history_requests_are_400(
    client: Client, auth: Callable[..., dict[str, str]], tenant: str
) -> None:
    for query in (
        "as_of=yesterday",
        "as_of=2026-03-01T00:00:00Z&limit=5",
        "order=sideways",
        "target_type=user",
        "limit=0",
    ):
        resp = await client.get(f"/v1/targets/invoice/42/history?{query}", headers=auth(tenant))
        assert resp.status_code == 400, query
        assert resp.headers["Content-Type"] == "application/problem+json"
    assert (await client.get("/v1/targets/invoice/42/history")).status_code == 401


async def test_other_tenants_history_is_invisible(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, invoice_events(tenant))
    other = await client.get("/v1/targets/invoice/42/history", headers=auth(f"{tenant}-x"))
    assert (await other.get_json())["data"] == []
    denied = await client.get(
        f"/v1/targets/invoice/42/history?tenant={tenant}", headers=auth(f"{tenant}-x")
    )
    assert denied.status_code == 403


async def test_cached_under_the_target_generation(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    tenant: str,
) -> None:
    await seed_events(store, invoice_events(tenant))
    url = "/v1/targets/invoice/42/history"
    assert (await client.get(url, headers=auth(tenant))).headers["X-Cache"] == "miss"
    assert (await client.get(url, headers=auth(tenant))).headers["X-Cache"] == "hit"

    more = invoice_events(tenant)[1]
    more.update(id="h5", occurred_at=(T0 + timedelta(hours=5)).isoformat())
    await seed_events(store, [more])
    redis = Redis.from_url(settings.redis_url or "")
    try:
        # Another object's write leaves this history cached ...
        await redis.incr(target_generation(cache_namespace(settings), tenant, "invoice", "43"))
        stale = await client.get(url, headers=auth(tenant))
        assert stale.headers["X-Cache"] == "hit"
        assert len((await stale.get_json())["data"]) == 4
        # ... this object's write (the processor bumps its generation) refreshes it.
        await redis.incr(target_generation(cache_namespace(settings), tenant, "invoice", "42"))
        fresh = await client.get(url, headers=auth(tenant))
        assert fresh.headers["X-Cache"] == "miss"
        assert [e["id"] for e in (await fresh.get_json())["data"]][-1] == "h5"
    finally:
        await redis.aclose()
