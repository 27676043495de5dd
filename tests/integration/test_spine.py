"""One event travels HTTP → Kafka → processor → MongoDB → cached API read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from tests.conftest import ProcessorProcess
from tests.helpers import eventually

pytestmark = pytest.mark.integration


async def test_event_travels_the_whole_way(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    processors()
    event = {
        "id": "evt-spine-1",
        "tenant": "acme",
        "action": "invoice.update",
        "actor": {"id": "alice", "type": "user", "name": "Alice"},
        "targets": [{"type": "invoice", "id": "42"}],
        "changes": {"total": {"old": 10, "new": 12}},
    }
    resp = await client.post("/v1/events", json=event, headers=auth())
    assert resp.status_code == 202
    assert (await resp.get_json())["ids"] == ["evt-spine-1"]

    async def stored() -> bool:
        return await store.count_documents({"_id": "acme/evt-spine-1"}) == 1

    await eventually(stored)
    doc = await store.find_one({"_id": "acme/evt-spine-1"})  # identity is (tenant, id)
    assert doc is not None and doc["tenant"] == "acme" and doc["actor"]["name"] == "Alice"
    assert doc["id"] == "evt-spine-1"

    first = await client.get("/v1/events", headers=auth())
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    body = await first.get_json()
    assert [e["id"] for e in body["data"]] == ["evt-spine-1"]
    assert body["data"][0]["changes"] == {"total": {"old": 10, "new": 12}}
    second = await client.get("/v1/events", headers=auth())
    assert second.headers["X-Cache"] == "hit"
    assert await second.get_json() == body

    one = await client.get("/v1/events/evt-spine-1", headers=auth())
    assert one.status_code == 200 and (await one.get_json())["action"] == "invoice.update"
    other_tenant = await client.get("/v1/events/evt-spine-1", headers=auth("globex"))
    assert other_tenant.status_code == 404


@pytest.mark.serial  # stored within the 5 s wait: alone, not beside busy workers
async def test_wait_true_answers_201_once_stored(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
) -> None:
    processors()
    resp = await client.post(
        "/v1/events?wait=true",
        json={"events": [{"tenant": "acme", "action": "user.login"} for _ in range(3)]},
        headers=auth(),
    )
    assert resp.status_code in (201, 202)
    if resp.status_code == 202:  # the first batch waits for the group to form
        resp = await client.post(
            "/v1/events?wait=true",
            json={"tenant": "acme", "action": "user.login"},
            headers=auth(),
        )
    assert resp.status_code == 201
    listed = await (await client.get("/v1/events?action=user.login", headers=auth())).get_json()
    assert len(listed["data"]) >= 3


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b'{"tenant": "acme"}', {"Content-Type": "application/json"}, 422),
        (b"[1, 2]", {"Content-Type": "application/json"}, 422),
    ],
)
async def test_bad_bodies_are_problem_json(
    client: Client,
    auth: Callable[..., dict[str, str]],
    body: bytes,
    headers: dict[str, str],
    status: int,
) -> None:
    resp = await client.post("/v1/events", data=body, headers={**auth(), **headers})
    assert resp.status_code == status
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert (await resp.get_json())["status"] == status


async def test_missing_and_bad_tokens_are_401(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        resp = await client.get("/v1/events", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.headers["Content-Type"] == "application/problem+json"


async def test_unknown_event_is_404(client: Client, auth: Callable[..., dict[str, str]]) -> None:
    resp = await client.get("/v1/events/does-not-exist", headers=auth())
    assert resp.status_code == 404
    assert resp.headers["Content-Type"] == "application/problem+json"


async def test_health_and_ready(client: Client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert (await ready.get_json())["checks"] == {"kafka": True, "mongodb": True, "redis": True}
