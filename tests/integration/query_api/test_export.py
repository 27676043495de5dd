"""``GET /v1/events/export``: streamed CSV/NDJSON of the list filters."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pymongo import monitoring
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.store_adapter import ensure_chain_index
from query_api.app import create_app
from query_api.export import CSV_COLUMNS
from tests.integration.query_api.test_history import seed_events

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
def tenant(unique: str) -> str:
    return f"exp-{unique}"


def many(tenant: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"e{i:06d}",
            "tenant": tenant,
            "action": "invoice.update" if i % 2 else "user.login",
            "occurred_at": (T0 + timedelta(seconds=i)).isoformat(),
            "actor": {"id": f"user{i % 7}", "name": f"User {i % 7}"},
            "targets": [{"type": "invoice", "id": str(i % 50)}],
            "outcome": "success" if i % 5 else "denied",
            "description": f"change number {i}",
            "changes": {"total": {"old": i, "new": i + 1}},
        }
        for i in range(n)
    ]


def parse_csv(body: bytes) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    return [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]]


async def test_csv_export_streams_every_matching_event(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, many(tenant, 2500))  # several cursor batches and chunks
    resp = await client.get("/v1/events/export?format=csv", headers=auth(tenant))
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert resp.headers["Content-Disposition"].startswith(
        f'attachment; filename="auditstream-{tenant}-'
    )
    assert resp.headers["Cache-Control"] == "no-store"
    rows = parse_csv(await resp.get_data())
    assert len(rows) == 2500
    assert rows[0]["id"] == "e002499" and rows[-1]["id"] == "e000000"  # newest first
    assert rows[-1]["changes"] == '{"total":{"new":1,"old":0}}'
    assert rows[-1]["occurred_at"] == "2026-02-01T00:00:00Z"

    filtered = await client.get(
        "/v1/events/export?action=invoice.update&outcome=denied&order=asc", headers=auth(tenant)
    )
    ids = [r["id"] for r in parse_csv(await filtered.get_data())]
    expected = [f"e{i:06d}" for i in range(2500) if i % 2 and not i % 5]
    assert ids == expected


async def test_ndjson_export_round_trips_the_api_form(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(store, many(tenant, 30))
    resp = await client.get(
        "/v1/events/export?format=ndjson&target_id=7&order=asc", headers=auth(tenant)
    )
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = (await resp.get_data()).splitlines()
    events = [orjson.loads(line) for line in lines]
    assert [e["id"] for e in events] == ["e000007"]
    listed = await (await client.get("/v1/events?target_id=7", headers=auth(tenant))).get_json()
    assert events == listed["data"]


async def test_export_escapes_formulas(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    await seed_events(
        store,
        [
            {
                "id": "evil",
                "tenant": tenant,
                "action": "user.rename",
                "actor": {"id": '=HYPERLINK("http://evil")', "name": "@bob"},
                "description": "+1+cmd|' /C calc'!A0",
            }
        ],
    )
    body = await (await client.get("/v1/events/export", headers=auth(tenant))).get_data()
    (row,) = parse_csv(body)
    assert row["actor_id"] == '\'=HYPERLINK("http://evil")'
    assert row["actor_name"] == "'@bob"
    assert row["description"] == "'+1+cmd|' /C calc'!A0"


async def test_export_is_not_captured_by_the_event_route(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    # An event whose id is literally "export" must not shadow the export either.
    await seed_events(store, [{"id": "export", "tenant": tenant, "action": "a.b"}])
    resp = await client.get("/v1/events/export?format=ndjson", headers=auth(tenant))
    assert resp.status_code == 200
    assert orjson.loads(await resp.get_data())["id"] == "export"


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("format=xlsx", 400),
        ("limit=10", 400),
        ("cursor=abc", 400),
        ("outcome=maybe", 400),
        ("since=yesterday", 400),
        ("actor[$ne]=x", 400),
    ],
)
async def test_bad_export_requests_are_problems(
    client: Client, auth: Callable[..., dict[str, str]], tenant: str, query: str, status: int
) -> None:
    resp = await client.get(f"/v1/events/export?{query}", headers=auth(tenant))
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/problem+json"


async def test_export_needs_read_scope_and_the_tenant(
    client: Client, auth: Callable[..., dict[str, str]], tenant: str
) -> None:
    assert (await client.get("/v1/events/export")).status_code == 401
    no_read = await client.get("/v1/events/export", headers=auth(tenant, "events:write"))
    assert no_read.status_code == 403
    other = await client.get(f"/v1/events/export?tenant={tenant}", headers=auth("someone-else"))
    assert other.status_code == 403


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_export_of_100k_events(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    """100,000 events inserted directly as the processor stores them (seq 1..n and
    the chain index, which the export's windows sample on SecantusDB), ten months
    before now, exported as CSV and NDJSON, every one counted.

    Peak memory is measured by bench/bench_export.py (over a real socket, where
    backpressure applies); the test client buffers the whole body by design.
    """
    n = 100_000
    received = datetime.now(UTC)
    await ensure_chain_index(store)
    raw = many(tenant, n)
    for start in range(0, n, 5000):
        docs = [
            {**event_to_document(AuditEvent.model_validate(r), received), "seq": start + k + 1}
            for k, r in enumerate(raw[start : start + 5000])
        ]
        await store.insert_many(docs, ordered=False)
    del raw
    csv_body = await (await client.get("/v1/events/export", headers=auth(tenant))).get_data()
    assert csv_body.count(b"\r\n") == n + 1
    assert csv_body.startswith(b"id,seq,") and b"e099999" in csv_body[:2000]
    nd = await (
        await client.get("/v1/events/export?format=ndjson&order=asc", headers=auth(tenant))
    ).get_data()
    lines = nd.splitlines()
    assert len(lines) == n
    assert orjson.loads(lines[0])["id"] == "e000000" and orjson.loads(lines[-1])["id"] == "e099999"


class _Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


async def test_export_cursor_has_no_whole_cursor_time_budget(
    settings: AuditSettings,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    tenant: str,
) -> None:
    # PyMongo sends the client's timeoutMS as maxTimeMS, which MongoDB counts
    # against a cursor's whole life: an export of millions of events would be
    # cut off mid-stream. Lists keep their bound; the export's cursor must not
    # carry one (its round trips are bounded by the socket timeout instead).
    await seed_events(store, many(tenant, 5))
    listener = _Finds()
    app = create_app(settings, mongo_listeners=[listener])
    async with app.test_app():
        client = app.test_client()
        listed = await client.get("/v1/events?limit=5", headers=auth(tenant))
        assert listed.status_code == 200
        exported = await client.get("/v1/events/export?format=ndjson", headers=auth(tenant))
        assert len((await exported.get_data()).splitlines()) == 5
    on_events = [f for f in listener.finds if f.get("find") == store.name]
    exports = [f for f in on_events if f.get("projection") == {"search": 0}]
    lists = [f for f in on_events if f not in exports]
    assert exports and lists
    assert all("maxTimeMS" in f for f in lists)
    assert not any("maxTimeMS" in f for f in exports)
