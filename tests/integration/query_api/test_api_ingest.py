"""``POST /v1/events`` over real HTTP: ids, bounds (413), validation (422 with
field paths), ``?wait=true`` and Kafka being unreachable (503 + Retry-After)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from audit_events.settings import AuditSettings
from auditstream.embedded import kafka_server
from tests.helpers import Store, bearer, make_event, serve_api

pytestmark = pytest.mark.integration


async def published(settings: AuditSettings, count: int) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(60):
            while len(out) < count:
                batch = await consumer.getmany(timeout_ms=500)
                out += [orjson.loads(m.value) for msgs in batch.values() for m in msgs]
    finally:
        await consumer.stop()
    return out


async def test_one_event_and_a_batch_are_published_with_their_ids(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    auth = bearer(settings)
    one = await http.post(
        "/v1/events", json={"id": "evt-1", "tenant": "acme", "action": "a.b"}, headers=auth
    )
    assert (one.status_code, one.json()) == (202, {"ids": ["evt-1"], "status": "accepted"})
    batch = await http.post(
        "/v1/events",
        json={
            "events": [
                {"tenant": "acme", "action": "a.c"},
                {"id": "evt-3", "tenant": "acme", "action": "a.d"},
            ]
        },
        headers=auth,
    )
    assert batch.status_code == 202
    ids = batch.json()["ids"]
    assert len(ids) == 2 and ids[1] == "evt-3" and ids[0] != ids[1]
    messages = await published(settings, 3)
    assert sorted(str(m["id"]) for m in messages) == sorted(["evt-1", *ids])
    assert {m["tenant"] for m in messages} == {"acme"}


async def test_validation_errors_name_the_field_paths(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    resp = await http.post(
        "/v1/events",
        json={
            "events": [
                {"tenant": "acme", "action": "ok.fine"},
                {"tenant": "acme", "action": "not valid!", "outcome": "maybe"},
            ]
        },
        headers=bearer(settings),
    )
    assert resp.status_code == 422
    assert resp.headers["Content-Type"] == "application/problem+json"
    locs = sorted(tuple(e["loc"]) for e in resp.json()["errors"])
    assert locs == [("events", 1, "action"), ("events", 1, "outcome")]


async def test_bounds_answer_413(settings: AuditSettings) -> None:
    strict = settings.model_copy(update={"max_batch_events": 3, "max_body_bytes": 4096})
    api = serve_api(strict)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            auth = bearer(settings)
            four = {"events": [{"tenant": "acme", "action": "a.b"}] * 4}
            too_many = await client.post("/v1/events", json=four, headers=auth)
            big = {
                "tenant": "acme",
                "action": "a.b",
                "description": "x" * 4000,
                "metadata": {"pad": "y" * 1000},
            }
            too_big = await client.post("/v1/events", json=big, headers=auth)
            three = await client.post(
                "/v1/events",
                json={"events": [{"tenant": "acme", "action": "a.b"}] * 3},
                headers=auth,
            )
        assert [too_many.status_code, too_big.status_code, three.status_code] == [413, 413, 202]
        assert too_big.headers["Content-Type"] == "application/problem+json"
    finally:
        api.stop()


async def test_wait_true_answers_201_once_stored_else_202_with_location(
    http: httpx.AsyncClient, settings: AuditSettings, db: Store
) -> None:
    auth = bearer(settings)
    event = make_event(7)

    async def processor_stores_it() -> None:
        await asyncio.sleep(0.5)
        await db.put([event])

    body = orjson.loads(event.model_dump_json())
    stored, _ = await asyncio.gather(
        http.post("/v1/events?wait=true", json=body, headers=auth), processor_stores_it()
    )
    assert (stored.status_code, stored.json()["status"]) == (201, "stored")
    never = await http.post(
        "/v1/events?wait=true",
        json={"id": "never-stored", "tenant": "acme", "action": "a.b"},
        headers=auth,
    )
    assert never.status_code == 202
    assert never.headers["Location"] == "/v1/events/never-stored"


async def test_kafka_unreachable_is_503_with_retry_after(
    settings: AuditSettings, tmp_path: Path, db: Store
) -> None:
    kafka = kafka_server(tmp_path / "own-kafka")
    kafka.start()
    api = serve_api(settings.model_copy(update={"kafka_bootstrap": kafka.url}))
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            auth = bearer(settings)
            ok = await client.post(
                "/v1/events", json={"tenant": "acme", "action": "a.b"}, headers=auth
            )
            assert ok.status_code == 202
            kafka.stop()
            down = await client.post(
                "/v1/events",
                json={
                    "events": [
                        {"id": f"lost-{i}", "tenant": "acme", "action": "a.b"} for i in range(3)
                    ]
                },
                headers=auth,
            )
            assert down.status_code == 503
            assert int(down.headers["Retry-After"]) > 0
            assert down.headers["Content-Type"] == "application/problem+json"
            ready = await client.get("/readyz")
            # Ready for reads, degraded for writes (issue 21: a Kafka blip must not
            # take every API pod out of the Service).
            assert ready.status_code == 200 and ready.json()["down"] == ["kafka"]
            assert ready.json()["status"] == "degraded"
    finally:
        api.stop()
        kafka.stop()
    assert await db.events.count_documents({}) == 0
