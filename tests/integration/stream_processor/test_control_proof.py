"""Only the API can correct or erase: control events carry its Ed25519 proof (issue 14 item 6).

A plain Kafka producer can write the events topic, so it can publish events in
the reserved ``auditstream.`` namespace; the processor must dead-letter every
one that is not an authentic control event (never store it, never apply it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.settings import AuditSettings
from tests.conftest import ProcessorProcess
from tests.helpers import event_body, eventually

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"


async def produce(settings: AuditSettings, values: list[dict[str, Any]]) -> None:
    """Publish raw events as any service with write access to the topic could."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            key = str(value["tenant"]).encode()
            await (await producer.send(settings.topic_events, orjson.dumps(value), key=key))
    finally:
        await producer.stop()


async def dead_letters(settings: AuditSettings, expected: int) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        settings.topic_dlq, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [orjson.loads(r.value) for r in records if r.value is not None]
    finally:
        await consumer.stop()
    return out


async def stored(store: AsyncCollection[dict[str, Any]], tenant: str, client_id: str) -> bool:
    doc = await store.find_one({"tenant": tenant, "$or": [{"id": client_id}, {"_id": client_id}]})
    return doc is not None


async def wait_stored(store: AsyncCollection[dict[str, Any]], tenant: str, cid: str) -> None:
    async def check() -> bool:
        return await stored(store, tenant, cid)

    await eventually(check, timeout=90)


async def test_forged_control_events_from_a_plain_producer_are_dead_lettered(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors()
    resp = await client.post(
        "/v1/events",
        json={"events": [event_body(0, id="f-000"), event_body(1, id="f-001")]},
        headers=auth(),
    )
    assert resp.status_code == 202
    await wait_stored(store, "acme", "f-001")

    target = [{"type": "audit_event", "id": "f-000"}]
    forged = [
        {  # what `auditstream emit --action auditstream.event.erased` sends
            "id": "forged-erase",
            "tenant": "acme",
            "action": chain.ERASED_ACTION,
            "actor": {"id": "mallory"},
            "targets": target,
            "description": "gone",
        },
        {
            "id": "forged-correct",
            "tenant": "acme",
            "action": chain.CORRECTED_ACTION,
            "actor": {"id": "mallory", "type": "admin"},
            "targets": [{"type": "audit_event", "id": "f-001"}],
            "description": "rewrite",
            "metadata": {"set": {"description": "nothing happened"}},
        },
        {  # a made-up proof
            "id": "forged-proof",
            "tenant": "acme",
            "action": chain.ERASED_ACTION,
            "actor": {"id": "mallory"},
            "targets": target,
            "description": "gone",
            "metadata": {"proof": {"kid": "0123456789abcdef", "sig": "AAAA"}},
        },
        {  # an unknown action in the reserved namespace
            "id": "forged-other",
            "tenant": "acme",
            "action": "auditstream.event.purged",
            "targets": target,
        },
    ]
    await produce(settings, [*forged, event_body(id="sentinel")])
    await wait_stored(store, "acme", "sentinel")

    got = await client.get("/v1/events/f-000", headers=auth())
    assert got.status_code == 200  # not erased
    view = await (await client.get("/v1/events/f-001", headers=auth())).get_json()
    assert view["description"] == "event number 1" and not view.get("corrections")
    for doc in forged:
        assert not await stored(store, "acme", str(doc["id"])), doc["id"]
    reasons = sorted(d["reason"] for d in await dead_letters(settings, len(forged)))
    assert len(reasons) == len(forged), reasons
    assert all(r.startswith("forged control event: ") for r in reasons), reasons


async def test_api_issued_control_events_carry_a_proof_and_apply(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors()
    events = [event_body(id="g-000"), event_body(id="g-001"), event_body(tenant="beta", id="g-000")]
    resp = await client.post("/v1/events", json={"events": events[:2]}, headers=auth())
    assert resp.status_code == 202
    resp = await client.post("/v1/events", json=events[2], headers=auth("beta"))
    assert resp.status_code == 202
    await wait_stored(store, "acme", "g-001")
    await wait_stored(store, "beta", "g-000")
    admin = auth(scopes=ADMIN)

    fix = {"reason": "typo", "set": {"description": "fixed"}}
    resp = await client.put("/v1/events/g-001?wait=true", json=fix, headers=admin)
    assert resp.status_code == 200, await resp.get_data()
    assert (await resp.get_json())["description"] == "fixed"
    resp = await client.delete("/v1/events/g-000?wait=true&reason=gdpr", headers=admin)
    assert resp.status_code == 204
    assert (await client.get("/v1/events/g-000", headers=auth())).status_code == 410

    erasure = await store.find_one({"tenant": "acme", "action": chain.ERASED_ACTION})
    assert erasure is not None
    proof = erasure["metadata"]["proof"]
    assert set(proof) == {"kid", "sig"}
    assert proof["kid"] == chain.key_id(settings.control_public_keys[0])
    fields = chain.event_fields(erasure)
    assert chain.control_problem(fields, chain.control_keys(settings)) is None

    # the same signed erasure, replayed into tenant beta (same target id there)
    stolen = {**fields, "tenant": "beta", "occurred_at": fields["occurred_at"].isoformat()}
    await produce(settings, [stolen, event_body(tenant="beta", id="sentinel")])
    await wait_stored(store, "beta", "sentinel")
    assert (await client.get("/v1/events/g-000", headers=auth("beta"))).status_code == 200
    assert not await stored(store, "beta", str(fields["id"]))
    [letter] = await dead_letters(settings, 1)
    assert letter["reason"].startswith("forged control event: "), letter


async def test_replay_applies_only_authentic_control_events(
    store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    from audit_events.codec import event_wire_dict
    from audit_events.schema import AuditEvent
    from audit_events.storage import REPLAY_COLLECTION
    from audit_events.topic_admin import ensure_topics
    from stream_processor.replay import Replayer
    from tests.conftest import CONTROL_PRIVATE

    await ensure_topics(settings)

    def erasure(cid: str, target: str) -> dict[str, Any]:
        event = AuditEvent.model_validate(
            {
                "id": cid,
                "tenant": "acme",
                "action": chain.ERASED_ACTION,
                "actor": {"id": "admin", "type": "admin"},
                "targets": [{"type": "audit_event", "id": target}],
                "description": "gdpr",
            }
        )
        return event_wire_dict(event)

    signed = chain.sign_control(chain.load_private_key(CONTROL_PRIVATE), erasure("ok", "r-000"))
    await produce(
        settings,
        [event_body(0, id="r-000"), event_body(1, id="r-001"), erasure("forged", "r-001"), signed],
    )
    result = await Replayer(settings, archive=False, grace_seconds=0.2).run(swap=False)
    assert (result.records, result.inserted, result.rejected) == (4, 3, 1)
    rebuilt = store.database[REPLAY_COLLECTION]
    by_id = {d["id"]: d async for d in rebuilt.find({})}
    assert set(by_id) == {"r-000", "r-001", "ok"}
    assert by_id["r-000"].get("erased", {}).get("event_id") == "ok"
    assert "erased" not in by_id["r-001"] and by_id["r-001"]["description"] == "event number 1"
