"""Auditing of reads (query_api/read_audit.py): the event builder, the loop rule,
the proof the processor checks, the cache split, and the fire-and-forget emitter
around the in-memory store (no servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from quart import Quart

import query_api.app as app_module
from audit_events import cache_keys
from audit_events.chain import (
    READ_ACTIONS,
    control_keys,
    control_problem,
    event_fields,
    generate_keypair,
    load_private_key,
)
from audit_events.codec import content_hash, encode_event, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from query_api import read_audit
from query_api.auth import mint_token
from query_api.publisher import PublishFailed
from query_api.read_audit import ReadRecord, build_event, selects_only_read_events, signed_event
from query_api.store import MemoryEventStore
from stream_processor.control import ControlGate

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SECRET = "unit-secret-0123456789abcdef-0123456789"
PRIVATE, PUBLIC = generate_keypair()


def settings(**over: Any) -> AuditSettings:
    return AuditSettings(
        jwt_secret=SecretStr(SECRET),
        mongo_db="unit",
        control_signing_key=SecretStr(PRIVATE),
        **over,
    )


def record(kind: read_audit.Kind = "list", **over: Any) -> ReadRecord:
    base: dict[str, Any] = {
        "kind": kind,
        "tenant": "acme",
        "subject": "alice",
        "filters": {"action": "invoice.*", "actor": "bob"},
        "count": 3,
    }
    return ReadRecord(**{**base, **over})


# --- the loop rule -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "only"),
    [
        ("auditstream.log.viewed", True),
        ("auditstream.log.exported", True),
        ("auditstream.log.*", True),
        ("auditstream.*", False),  # corrections and erasures too
        ("auditstream.event.erased", False),
        ("invoice.*", False),
        ("auditstream.logins", False),
        (None, False),
    ],
)
def test_only_reads_of_read_events_are_exempt(action: str | None, only: bool) -> None:
    filters = {} if action is None else {"action": action, "actor": "x"}
    assert selects_only_read_events(filters) is only


# --- the event -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        ("list", "auditstream.log.viewed"),
        ("get", "auditstream.log.viewed"),
        ("history", "auditstream.log.viewed"),
        ("export", "auditstream.log.exported"),
        ("verify", "auditstream.log.verified"),
    ],
)
def test_event_names_the_reader_tenant_filters_and_count(kind: Any, action: str) -> None:
    rec = record(kind, detail={"page": {"limit": 10}}, context={"request_id": "r-1"})
    event = build_event(rec)
    assert event["action"] == action and event["tenant"] == "acme"
    assert event["actor"] == {"id": "alice", "type": "api_client"}
    assert event["metadata"]["read"] == {
        "kind": kind,
        "filters": {"action": "invoice.*", "actor": "bob"},
        "count": 3,
        "page": {"limit": 10},
    }
    assert event["context"] == {"request_id": "r-1"} and event["crud"] == "r"
    assert "targets" not in event  # so no object's history holds read events
    AuditEvent.model_validate(event)


def test_count_is_taken_from_the_answer_off_the_request_path() -> None:
    page = orjson.dumps({"data": [{"id": "a"}, {"id": "b"}], "next_cursor": None})
    assert build_event(record(body=page, count=0))["metadata"]["read"]["count"] == 2
    state = orjson.dumps({"state": {}, "events_applied": 7})
    assert build_event(record("history", body=state))["metadata"]["read"]["count"] == 7
    assert build_event(record(body=b"not json"))["metadata"]["read"]["count"] == 0


def test_signed_read_events_pass_the_processor_gate_and_forged_ones_do_not() -> None:
    key = load_private_key(PRIVATE)
    keys = control_keys(settings())
    gate = ControlGate(keys)
    for kind in ("list", "export", "verify"):
        raw = signed_event(record(kind), key, settings())
        event = AuditEvent.model_validate_json(raw)
        assert raw == encode_event(event)  # what the processor decodes and hashes
        assert event.action in READ_ACTIONS
        fields = event_fields(event_to_document(event, T0))
        assert control_problem(fields, keys) is None
        assert gate(event_to_document(event, T0)) is None
    forged = AuditEvent.model_validate(build_event(record()))  # no proof
    assert gate(event_to_document(forged, T0)) is not None
    other, _ = generate_keypair()
    foreign = AuditEvent.model_validate_json(
        signed_event(record(), load_private_key(other), settings())
    )
    assert gate(event_to_document(foreign, T0)) is not None
    # a signed event of an unknown action in the namespace stays refused
    unknown = {**build_event(record()), "action": "auditstream.log.deleted"}
    doc = event_fields(event_to_document(AuditEvent.model_validate(unknown), T0))
    assert "unknown action" in (control_problem(doc, keys) or "")


def test_read_events_bump_their_own_generation_not_the_tenants() -> None:
    read = event_to_document(AuditEvent.model_validate(build_event(record())), T0)
    plain = event_to_document(AuditEvent(tenant="acme", action="invoice.update"), T0)
    assert cache_keys.generation_keys("ns", [read]) == [
        cache_keys.read_audit_generation("ns", "acme")
    ]
    assert cache_keys.generation_keys("ns", [plain]) == [cache_keys.tenant_generation("ns", "acme")]


# --- the emitter around the in-memory store ---------------------------------------


class Publisher:
    def __init__(self) -> None:
        self.published: list[AuditEvent] = []
        self.fail = False

    async def publish(self, messages: list[tuple[bytes, bytes]], timeout: float = 10.0) -> None:
        if self.fail:
            raise PublishFailed("broker down")
        self.published += [AuditEvent.model_validate_json(v) for _, v in messages]


def stored(n: int, **fields: Any) -> dict[str, Any]:
    event = AuditEvent.model_validate(
        {
            "id": f"e{n:03d}",
            "tenant": "acme",
            "action": "invoice.update",
            "occurred_at": T0 + timedelta(seconds=n),
            "actor": {"id": "bob"},
            "targets": [{"type": "invoice", "id": "i-1"}],
            **fields,
        }
    )
    return {**event_to_document(event, T0), "content_hash": content_hash(event)}


@pytest.fixture
def publisher() -> Publisher:
    return Publisher()


def make_app(publisher: Publisher, **over: Any) -> Quart:
    read = {**build_event(record()), "id": "r001", "occurred_at": T0 + timedelta(seconds=50)}
    docs = [stored(n) for n in range(5)]
    docs.append({**event_to_document(AuditEvent.model_validate(read), T0), "content_hash": "x"})
    return app_module.create_app(
        settings(**over), store=MemoryEventStore(docs), publisher=publisher
    )


@pytest.fixture
async def app(publisher: Publisher) -> AsyncIterator[Quart]:
    api = make_app(publisher)
    async with api.test_app():
        yield api


def headers() -> dict[str, str]:
    token = mint_token(settings(), subject="carol", tenant="acme", scopes=["events:read"])
    return {"Authorization": f"Bearer {token}", "User-Agent": "unit-test"}


async def drained(app: Quart) -> None:
    found = read_audit.auditor(app)
    assert found is not None
    for _ in range(200):
        if not found.pending():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)


async def test_each_read_publishes_one_event_without_waiting(
    app: Quart, publisher: Publisher
) -> None:
    client = app.test_client()
    urls = [
        "/v1/events?actor=bob&limit=2",
        "/v1/events/e001",
        "/v1/targets/invoice/i-1/history?order=desc",
        "/v1/events/export?format=ndjson&actor=bob",
    ]
    for url in urls:
        resp = await client.get(url, headers=headers())
        assert resp.status_code == 200, url
        await resp.get_data()
    await drained(app)
    got = [
        (e.action, e.metadata["read"]["kind"], e.metadata["read"]["count"])
        for e in publisher.published
    ]
    assert got == [
        ("auditstream.log.viewed", "list", 2),
        ("auditstream.log.viewed", "get", 1),
        ("auditstream.log.viewed", "history", 5),
        ("auditstream.log.exported", "export", 5),
    ]
    first = publisher.published[0]
    assert first.actor is not None and first.actor.id == "carol" and first.tenant == "acme"
    assert first.metadata["read"]["filters"] == {"actor": "bob"}
    assert first.metadata["proof"]  # signed: the processor accepts it
    assert first.context is not None and first.context.user_agent == "unit-test"
    assert publisher.published[3].metadata["read"]["complete"] is True
    assert publisher.published[1].metadata["read"]["event_id"] == "e001"


async def test_reads_of_read_events_publish_nothing(app: Quart, publisher: Publisher) -> None:
    client = app.test_client()
    for url in (
        "/v1/events?action=auditstream.log.*",
        "/v1/events?action=auditstream.log.viewed",
        "/v1/events/r001",  # a read event itself
        "/v1/events/export?action=auditstream.log.*",
    ):
        resp = await client.get(url, headers=headers())
        assert resp.status_code == 200, url
        await resp.get_data()
    await drained(app)
    assert publisher.published == []
    resp = await client.get("/v1/events?action=auditstream.*", headers=headers())
    body = await resp.get_json()
    assert [e["id"] for e in body["data"]] == ["r001"]
    await drained(app)
    assert len(publisher.published) == 1  # not only read events: audited


async def test_the_setting_turns_it_off(publisher: Publisher) -> None:
    api = make_app(publisher, read_audit=False)
    async with api.test_app():
        resp = await api.test_client().get("/v1/events", headers=headers())
        assert resp.status_code == 200
        await drained(api)
    assert publisher.published == []


async def test_a_failed_publication_is_counted_and_logged(
    publisher: Publisher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(read_audit, "RETRY_SECONDS", 0.01)
    publisher.fail = True
    api = make_app(publisher)
    async with api.test_app():
        resp = await api.test_client().get("/v1/events", headers=headers())
        assert resp.status_code == 200  # the read does not fail with the audit
        await drained(api)
        found = read_audit.auditor(api)
        assert found is not None
        await asyncio.sleep(0.1)
        assert found.failures.labels("publish")._value.get() == 1
    assert "read audit event lost (publish" in caplog.text
    assert "actor=carol" in caplog.text


async def test_without_a_signing_key_reads_are_counted_as_lost(publisher: Publisher) -> None:
    api = app_module.create_app(
        AuditSettings(jwt_secret=SecretStr(SECRET), mongo_db="unit"),
        store=MemoryEventStore([stored(1)]),
        publisher=publisher,
    )
    async with api.test_app():
        resp = await api.test_client().get("/v1/events", headers=headers())
        assert resp.status_code == 200
        await drained(api)
        found = read_audit.auditor(api)
        assert found is not None and found.failures.labels("unsigned")._value.get() == 1
    assert publisher.published == []
