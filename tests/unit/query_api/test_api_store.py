"""The API's data layer (query_api/store.py) and route logic against its in-memory fake.

No server: ``create_app(settings, store=MemoryEventStore(), publisher=...)``
builds the API around the fake, as httpx tests a client against a
``MockTransport``. The same filters as the MongoDB store (``listing.matcher``).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from quart import Quart

import query_api.app as app_module
from audit_events.chain import generate_keypair
from audit_events.codec import content_hash, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from query_api import admin, events
from query_api.auth import mint_token
from query_api.query import ListQuery
from query_api.store import MemoryEventStore

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = "unit-secret-0123456789abcdef-0123456789"


CONTROL_PRIVATE, _ = generate_keypair()


def settings() -> AuditSettings:
    return AuditSettings(
        jwt_secret=SecretStr(SECRET),
        mongo_db="unit",
        control_signing_key=SecretStr(CONTROL_PRIVATE),
    )


def event(n: int, tenant: str = "acme", **fields: Any) -> AuditEvent:
    base: dict[str, Any] = {
        "id": f"e{n:03d}",
        "tenant": tenant,
        "action": ("invoice.update", "invoice.create", "user.login")[n % 3],
        "occurred_at": T0 + timedelta(seconds=n),
        "actor": {"id": ("alice", "bob")[n % 2], "type": "user"},
        "targets": [{"type": "invoice", "id": str(n % 2)}],
        "description": f"event number {n}" + (" refund" if n % 5 == 0 else ""),
    }
    return AuditEvent.model_validate({**base, **fields})


def doc(e: AuditEvent, **extra: Any) -> dict[str, Any]:
    return {**event_to_document(e, T0), "content_hash": content_hash(e), **extra}


def query(order: str = "desc", limit: int = 100, **filters: str) -> ListQuery:
    return ListQuery(filters, order, limit, None)


class Publisher:
    """The event log: records what was published; ``then`` plays the processor."""

    def __init__(self) -> None:
        self.published: list[tuple[bytes, bytes]] = []
        self.then: Callable[[list[AuditEvent]], None] | None = None

    async def publish(
        self,
        messages: list[tuple[bytes, bytes]],
        timeout: float = 10.0,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.published += messages
        if self.then is not None:
            batch = [AuditEvent.model_validate_json(value) for _, value in messages]
            asyncio.get_running_loop().call_later(0.05, self.then, batch)


@pytest.fixture
def store() -> MemoryEventStore:
    erased = {"erased": {"by": "admin", "at": T0.isoformat(), "reason": "gdpr"}}
    docs = [doc(event(n), **(erased if n == 4 else {})) for n in range(10)]
    docs.append(doc(event(1, tenant="other")))
    return MemoryEventStore(docs)


@pytest.fixture
def publisher() -> Publisher:
    return Publisher()


@pytest.fixture
async def app(store: MemoryEventStore, publisher: Publisher) -> AsyncIterator[Quart]:
    api = app_module.create_app(settings(), store=store, publisher=publisher)
    async with api.test_app():
        yield api


def auth(tenant: str = "acme", scopes: str = "events:read events:write") -> dict[str, str]:
    token = mint_token(settings(), subject="t", tenant=tenant, scopes=scopes.split())
    return {"Authorization": f"Bearer {token}"}


async def get(app: Quart, url: str, **headers: str) -> tuple[int, Any, Any]:
    resp = await app.test_client().get(url, headers={**auth(), **headers})
    raw = await resp.get_data()
    parse = resp.mimetype in ("application/json", "application/problem+json") and raw
    body = orjson.loads(raw) if parse else raw
    return resp.status_code, body, resp.headers


def ids(body: dict[str, Any]) -> list[str]:
    return [e["id"] for e in body["data"]]


# --- the store itself --------------------------------------------------------


async def test_list_page_filters_orders_and_reads_one_more(store: MemoryEventStore) -> None:
    page = await store.list_page("acme", query(limit=3), False)
    assert [d["id"] for d in page] == ["e009", "e008", "e007", "e006"]  # limit + 1
    asc = await store.list_page("acme", query("asc", 2, actor="bob"), False)
    assert [d["id"] for d in asc] == ["e001", "e003", "e005"]
    erased = await store.list_page("acme", query(action="invoice.*"), True)
    assert "e004" in [d["id"] for d in erased]
    assert "e004" not in [d["id"] for d in await store.list_page("acme", query(), False)]


async def test_get_is_per_tenant_and_keeps_erased_events(store: MemoryEventStore) -> None:
    assert (await store.get("acme", "e004") or {}).get("erased")
    assert (await store.get("other", "e001") or {})["tenant"] == "other"
    assert await store.get("other", "e002") is None


async def test_history_as_of_and_export(store: MemoryEventStore) -> None:
    page = await store.history_page("acme", query("asc", target_type="invoice", target_id="0"))
    assert [d["id"] for d in page] == ["e000", "e002", "e006", "e008"]  # e004 erased
    state = await store.state_as_of("acme", "invoice", "0", T0 + timedelta(seconds=5))
    assert state["events_applied"] == 2 and state["last_event_id"] == "e002"
    exported = [d["id"] async for d in store.export("acme", query("asc"), True)]
    assert exported == [f"e{n:03d}" for n in range(10)]


async def test_wait_stored_wakes_on_put_and_compares_content() -> None:
    store, e = MemoryEventStore(), event(1)
    asyncio.get_running_loop().call_later(0.05, store.put, [doc(e)])
    assert await store.wait_stored({("acme", "e001"): content_hash(e)}, 2.0) is True
    other = event(1, description="another content, same id")
    assert await store.wait_stored({("acme", "e001"): content_hash(other)}, 0.1) is False
    assert await store.wait_stored({("other", "e001"): content_hash(e)}, 0.1) is False


async def test_wait_applied_returns_the_changed_event(store: MemoryEventStore) -> None:
    corrected = {**(await store.get("acme", "e002") or {}), "corrections": [{"event_id": "c1"}]}
    asyncio.get_running_loop().call_later(0.05, store.put, [corrected])
    found = await store.wait_applied("acme", "e002", "c1", 2.0)
    assert found is not None and found["corrections"] == [{"event_id": "c1"}]
    assert await store.wait_applied("acme", "e004", None, 0.1) is not None  # erased already
    assert await store.wait_applied("acme", "e003", None, 0.1) is None


# --- route logic through app.test_client() -----------------------------------


async def test_list_route_filters_q_and_time_range_and_paginates(app: Quart) -> None:
    status, body, headers = await get(app, "/v1/events?q=refund")
    assert status == 200 and ids(body) == ["e005", "e000"] and headers["X-Cache"] == "bypass"
    url = "/v1/events?since=2026-01-01T00:00:02Z&until=2026-01-01T00:00:06Z&order=asc&limit=2"
    status, body, _ = await get(app, url)
    assert ids(body) == ["e002", "e003"] and body["next_cursor"]
    status, body, _ = await get(app, url + f"&cursor={body['next_cursor']}")
    assert ids(body) == ["e005"] and body["next_cursor"] is None  # e004 is erased
    _, body, _ = await get(app, "/v1/events?include_erased=true&actor=alice&action=invoice.*")
    assert ids(body) == ["e006", "e004", "e000"]
    assert (await get(app, "/v1/events?actor[$ne]=x"))[0] == 400


async def test_get_route_answers_404_for_other_tenants_and_410_for_erased(app: Quart) -> None:
    status, body, _ = await get(app, "/v1/events/e003")
    assert status == 200 and body["id"] == "e003" and "search" not in body
    assert (await get(app, "/v1/events/e010"))[0] == 404
    status, body, headers = await get(app, "/v1/events/e004")
    assert status == 410 and headers["Content-Type"] == "application/problem+json"


async def test_history_and_as_of_routes(app: Quart) -> None:
    status, body, _ = await get(app, "/v1/targets/invoice/1/history?limit=2")
    assert status == 200 and ids(body) == ["e001", "e003"] and body["next_cursor"]
    assert body["target"] == {"type": "invoice", "id": "1"}
    status, body, _ = await get(app, "/v1/targets/invoice/1/history?as_of=2026-01-01T00:00:04Z")
    assert status == 200 and body["events_applied"] == 2 and body["last_event_id"] == "e003"
    bad = await get(app, "/v1/targets/invoice/1/history?as_of=2026-01-01T00:00:04Z&actor=x")
    assert bad[0] == 400


async def test_export_route_streams_filtered_rows_and_tombstones(app: Quart) -> None:
    status, raw, headers = await get(app, "/v1/events/export?format=ndjson&order=asc&actor=alice")
    lines = [orjson.loads(line) for line in raw.splitlines()]
    assert status == 200 and [e["id"] for e in lines] == ["e000", "e002", "e006", "e008"]
    assert headers["Cache-Control"] == "no-store"
    _, raw, _ = await get(app, "/v1/events/export?include_erased=true&until=2026-01-01T00:00:05Z")
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert [r["id"] for r in rows] == ["e004", "e003", "e002", "e001", "e000"]
    assert rows[0]["erased"] and not rows[0]["description"]  # a tombstone, no payload


async def test_checkpoints_route_reads_the_store(app: Quart, store: MemoryEventStore) -> None:
    store.saved_checkpoints += [{"tenant": "acme", "seq": 2}, {"tenant": "other", "seq": 1}]
    status, body, _ = await get(app, "/v1/checkpoints")
    assert status == 200 and body == {"data": [{"tenant": "acme", "seq": 2}]}


async def test_post_wait_answers_201_once_stored_and_202_when_not(
    app: Quart, store: MemoryEventStore, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    publisher.then = lambda batch: store.put([doc(e) for e in batch])
    payload = orjson.loads(event(20).model_dump_json())
    resp = await client.post("/v1/events?wait=true", json=payload, headers=auth())
    assert resp.status_code == 201 and (await resp.get_json())["status"] == "stored"
    publisher.then = None  # the processor is away
    monkeypatch.setattr(events, "WAIT_SECONDS", 0.2)
    payload = orjson.loads(event(21).model_dump_json())
    resp = await client.post("/v1/events?wait=true", json=payload, headers=auth())
    assert resp.status_code == 202 and resp.headers["Location"] == "/v1/events/e021"
    assert len(publisher.published) == 2


async def test_erase_waits_until_the_store_applied_it(
    app: Quart, store: MemoryEventStore, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "WAIT_SECONDS", 0.2)
    client = app.test_client()
    headers = auth(scopes="events:read events:admin")
    resp = await client.delete("/v1/events/e004?reason=again", headers=headers)
    assert resp.status_code == 204 and not publisher.published  # erased already: no-op
    resp = await client.delete("/v1/events/e003?reason=gdpr&wait=true", headers=headers)
    assert resp.status_code == 202 and len(publisher.published) == 1  # not applied in time
    erased = {"by": "t", "event_id": "c"}
    publisher.then = lambda _: store.put([{**(store.documents["acme/e003"]), "erased": erased}])
    resp = await client.delete("/v1/events/e002?reason=gdpr&wait=true", headers=headers)
    assert resp.status_code == 202  # the processor erased another event, not this one
    publisher.then = lambda _: store.put([{**(store.documents["acme/e001"]), "erased": erased}])
    resp = await client.delete("/v1/events/e001?reason=gdpr&wait=true", headers=headers)
    assert resp.status_code == 204
    assert (await client.delete("/v1/events/nope?reason=x", headers=headers)).status_code == 404


@pytest.mark.parametrize("order", ["forward", "reversed"])
async def test_blueprint_order_does_not_matter(
    store: MemoryEventStore, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    blueprints = app_module.BLUEPRINTS
    monkeypatch.setattr(
        app_module, "BLUEPRINTS", blueprints if order == "forward" else blueprints[::-1]
    )
    api = app_module.create_app(settings(), store=store, publisher=Publisher())
    async with api.test_app():
        status, raw, headers = await get(api, "/v1/events/export?format=ndjson")
        assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
        assert len(raw.splitlines()) == 9
        assert (await get(api, "/v1/events/e001"))[0] == 200


async def test_services_live_in_app_extensions(app: Quart, store: MemoryEventStore) -> None:
    from query_api.state import api_state

    state = api_state(app)
    assert state.store is store and state.services is None and state.cache is not None
    assert "AUDITSTREAM_SERVICES" not in app.config


async def test_tenants_suggestions_and_histogram_routes(app: Quart) -> None:
    client = app.test_client()
    resp = await client.get("/v1/tenants", headers=auth(tenant="*"))
    assert await resp.get_json() == {"data": ["acme", "other"], "all_tenants": True}
    status, body, _ = await get(app, "/v1/suggestions")
    assert status == 200 and body["actors"] == ["alice", "bob"]
    assert body["target_types"] == ["invoice"] and "user.login" in body["actions"]
    url = "/v1/histogram?buckets=2&since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:10Z"
    status, body, _ = await get(app, url + "&actor=alice")
    assert status == 200 and body["counts"] == [2, 2] and body["total"] == 4  # e004 erased
    _, body, _ = await get(app, url + "&include_erased=true")
    assert body["counts"] == [5, 5] and body["truncated"] is False
