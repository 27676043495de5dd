"""The shared core: schema, canonical codec, ids, cache keys, settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from audit_events.cache_keys import query_key, target_generation, tenant_generation
from audit_events.chain import GENESIS, document_content_hash, seal
from audit_events.codec import (
    canonical_json,
    content_hash,
    current_layout,
    document_to_api,
    event_to_document,
)
from audit_events.ids import uuid7
from audit_events.schema import AuditEvent, Limits
from audit_events.settings import SettingsError, load_settings, settings_env
from audit_events.storage import event_key

pytestmark = pytest.mark.unit


def test_uuid7_is_version_7_and_time_ordered() -> None:
    a = uuid7(now_ns=1_700_000_000_000_000_000)
    b = uuid7(now_ns=1_700_000_000_001_000_000)
    assert uuid.UUID(a).version == 7
    assert a < b


def test_canonical_json_sorts_keys_and_is_compact() -> None:
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )


def test_content_hash_ignores_key_order_of_input() -> None:
    base = {"id": "e1", "tenant": "t", "action": "a.b", "occurred_at": "2026-01-01T00:00:00Z"}
    one = AuditEvent.model_validate({**base, "metadata": {"x": 1, "y": 2}})
    two = AuditEvent.model_validate({"metadata": {"y": 2, "x": 1}, **base})
    assert content_hash(one) == content_hash(two)
    assert len(content_hash(one)) == 64


def test_occurred_at_is_normalised_to_utc_milliseconds() -> None:
    event = AuditEvent(
        tenant="t",
        action="a",
        occurred_at=datetime.fromisoformat("2026-01-01T02:00:00.123456+02:00"),
    )
    assert event.occurred_at == datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)


def test_stored_document_round_trips_to_the_same_public_view() -> None:
    event = AuditEvent(
        id="e1",
        tenant="t",
        action="invoice.update",
        actor={"id": "u"},
        targets=[{"type": "invoice", "id": "9", "name": "Invoice Nine"}],
        changes={"total": {"old": 1, "new": 2}},
        metadata={"k": [1, None]},
    )
    received = datetime(2026, 1, 1, tzinfo=UTC)
    doc = event_to_document(event, received)
    assert doc["_id"] == "t/e1" and doc["id"] == "e1"  # identity is (tenant, id)
    # The q words, then the index tokens (all, exact action, actor id, target ids).
    assert doc["search"] == [
        *("9", "invoice", "nine", "u", "update"),
        *("*", "c:invoice.update", "a:u", "t:9"),
    ]
    view = document_to_api(doc)
    assert view["id"] == "e1" and view["received_at"] == "2026-01-01T00:00:00Z"
    assert "search" not in view
    assert AuditEvent.model_validate({k: v for k, v in view.items() if k != "received_at"}) == event


def test_the_same_id_in_two_tenants_is_two_documents_with_the_same_content_rules() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    acme = AuditEvent(id="order-123", tenant="acme", action="a.b", occurred_at=when)
    globex = acme.model_copy(update={"tenant": "globex"})
    docs = [event_to_document(e, when) for e in (acme, globex)]
    assert [d["_id"] for d in docs] == ["acme/order-123", "globex/order-123"]
    assert event_key("acme", "order-123") == "acme/order-123"
    assert [document_to_api(d)["id"] for d in docs] == ["order-123", "order-123"]


def test_old_layout_documents_hash_and_read_the_same_and_migrate_unchanged() -> None:
    event = AuditEvent(
        id="e1", tenant="t", action="a.b", occurred_at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    new = event_to_document(event, datetime(2026, 1, 2, tzinfo=UTC))
    seal(new, 1, GENESIS)
    old = {"_id": "e1", **{k: v for k, v in new.items() if k not in ("_id", "id")}}
    assert document_content_hash(old) == document_content_hash(new) == content_hash(event)
    assert document_to_api(old) == document_to_api(new)
    assert current_layout(old) == new and list(current_layout(old))[:2] == ["_id", "id"]
    assert current_layout(new) is new


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"action": "a"}, "tenant"),
        ({"tenant": "t"}, "action"),
        ({"tenant": "t", "action": "a", "crud": "x"}, "crud"),
        ({"tenant": "t", "action": "a", "outcome": "maybe"}, "outcome"),
        ({"tenant": "t", "action": "a", "occurred_at": "2026-01-01T00:00:00"}, "occurred_at"),
        ({"tenant": "t", "action": "a", "surprise": 1}, "surprise"),
        ({"tenant": "t", "action": "a b"}, "action"),
        ({"tenant": "t", "action": "a", "metadata": {"$where": "1"}}, "metadata"),
        ({"tenant": "t", "action": "a", "metadata": {"a.b": 1}}, "metadata"),
        ({"tenant": "t", "action": "a", "changes": {"$set": {"new": 1}}}, "changes"),
        ({"tenant": "t", "action": "a", "targets": [{"id": "1"}]}, "targets"),
        # Integers BSON cannot hold would be accepted and then fail every write (a poison pill).
        ({"tenant": "t", "action": "a", "metadata": {"n": 2**63}}, "metadata"),
        ({"tenant": "t", "action": "a", "metadata": {"n": [1, 2**64]}}, "metadata"),
        ({"tenant": "t", "action": "a", "changes": {"f": {"new": -(2**63) - 1}}}, "changes"),
    ],
)
def test_invalid_events_name_the_field(payload: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        AuditEvent.model_validate(payload)
    assert where in {str(e["loc"][0]) for e in info.value.errors()}


def test_int64_bounds_are_accepted_and_json_beyond_them_is_a_validation_error() -> None:
    edge = {"tenant": "t", "action": "a", "metadata": {"max": 2**63 - 1, "min": -(2**63)}}
    assert AuditEvent.model_validate(edge).metadata == edge["metadata"]
    with pytest.raises(ValidationError, match="does not fit in 64 bits"):
        AuditEvent.model_validate_json(b'{"tenant":"t","action":"a","metadata":{"n":%d}}' % 10**30)


def test_metadata_depth_and_size_limits_come_from_context() -> None:
    deep: dict[str, object] = {"v": 1}
    for _ in range(5):
        deep = {"n": deep}
    payload = {"tenant": "t", "action": "a", "metadata": deep}
    AuditEvent.model_validate(payload)  # default depth 8 admits 6 levels
    with pytest.raises(ValidationError, match="nested deeper than 3"):
        AuditEvent.model_validate(payload, context={"limits": Limits(max_metadata_depth=3)})
    big = {"tenant": "t", "action": "a", "metadata": {"blob": "x" * 600}}
    with pytest.raises(ValidationError, match="limit 512"):
        AuditEvent.model_validate(big, context={"limits": Limits(max_metadata_bytes=512)})


def test_cache_keys_embed_generations_and_separate_tenants() -> None:
    assert tenant_generation("n", "a") != tenant_generation("n", "b")
    assert target_generation("n", "a", "invoice", "1") != target_generation(
        "n", "a", "invoice", "2"
    )
    k1 = query_key("n", "list", "a", [1], "{}")
    assert k1 != query_key("n", "list", "a", [2], "{}") != query_key("n", "list", "b", [1], "{}")
    # Two deployments (databases) on one Redis: every key differs.
    assert tenant_generation("db1", "a") != tenant_generation("db2", "a")
    assert query_key("db1", "list", "a", [1], "{}") != query_key("db2", "list", "a", [1], "{}")


def test_invalid_setting_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITSTREAM_API_PORT", "eighty")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert str(info.value).startswith("invalid setting AUDITSTREAM_API_PORT:")
    assert "\n" not in str(info.value)


def test_missing_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDITSTREAM_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(SettingsError, match="missing setting AUDITSTREAM_KAFKA_BOOTSTRAP"):
        load_settings(_env_file=None).require("kafka_bootstrap")


def test_settings_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        kafka_bootstrap="k:1", jwt_algorithms=["HS256"], kafka_idempotence=True
    )
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again.kafka_bootstrap == "k:1" and again.kafka_idempotence is True
    assert again.jwt_algorithms == ["HS256"]
