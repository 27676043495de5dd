"""Decode + validate: each kind of bad input gets a precise reason, none raises."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_events.chain import document_content_hash
from audit_events.codec import search_terms
from audit_events.schema import AuditEvent, Limits
from stream_processor.decode import decode, decode_batch
from stream_processor.records import Record

pytestmark = pytest.mark.unit

LIMITS = Limits(max_metadata_bytes=1024, max_metadata_depth=3)
MAX_BYTES = 4096


def rec(value: bytes, offset: int = 7) -> Record:
    return Record("audit.events", 2, offset, 1_700_000_000_000, b"acme", value)


def ev(**fields: object) -> bytes:
    return orjson.dumps({"id": "e1", "tenant": "acme", "action": "user.login", **fields})


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


POISON = [
    (b"x" * (MAX_BYTES + 1), "oversized: 4097 bytes exceeds the limit of 4096"),
    (b'{"tenant": "acme", "action": "\xff"}', "not UTF-8: invalid start byte at byte 30"),
    (b"{not json", "not JSON: "),
    (b"", "not JSON: "),
    (b"[1, 2]", "not a JSON object"),
    (b"42", "not a JSON object"),
    (orjson.dumps({"id": "e1", "action": "user.login"}), "invalid event: tenant: Field required"),
    (orjson.dumps({"id": "e1", "tenant": "acme"}), "invalid event: action: Field required"),
    (ev(tenant=5), "invalid event: tenant: Input should be a valid string"),
    (ev(targets="invoice"), "invalid event: targets: Input should be a valid array"),
    (ev(outcome="maybe"), "invalid event: outcome: Input should be 'success', 'failure' or"),
    (ev(occurred_at="yesterday"), "invalid event: occurred_at: Input should be a valid datetime"),
    (ev(unknown=1), "invalid event: unknown: Extra inputs are not permitted"),
    (ev(metadata=nested(4)), "invalid event: metadata: Value error, metadata nested deeper than 3"),
    (
        ev(metadata={"k": "v" * 2000}),
        "invalid event: metadata: Value error, metadata is 2008 bytes, limit 1024",
    ),
    (ev(metadata={"$where": 1}), "invalid event: metadata: Value error, key '$where' must not"),
]


@pytest.mark.parametrize(("raw", "reason"), POISON)
def test_bad_input_is_rejected_with_a_precise_reason(raw: bytes, reason: str) -> None:
    result = decode(rec(raw), LIMITS, MAX_BYTES)
    assert isinstance(result, str)
    assert result.startswith(reason)


def test_valid_event_becomes_a_document_keyed_by_tenant_and_id() -> None:
    doc = decode(rec(ev(metadata=nested(3))), LIMITS, MAX_BYTES)
    assert isinstance(doc, dict)
    assert doc["_id"] == "acme/e1" and doc["tenant"] == "acme" and doc["id"] == "e1"
    assert doc["received_at"].timestamp() == 1_700_000_000.0


def test_an_event_without_occurred_at_hashes_the_same_on_every_redelivery() -> None:
    # occurred_at defaults to the record's timestamp, not the time of decoding: a
    # redelivery must not look like another event with the same id.
    first, again = decode(rec(ev()), LIMITS, MAX_BYTES), decode(rec(ev()), LIMITS, MAX_BYTES)
    assert isinstance(first, dict) and isinstance(again, dict)
    assert first["occurred_at"] == first["received_at"]
    assert document_content_hash(first) == document_content_hash(again)


def test_decode_batch_keeps_every_record_and_splits_rejects() -> None:
    records = [rec(ev(), 0), rec(b"\x00", 1), rec(ev(id="e2"), 2)]
    batch = decode_batch(records, LIMITS, MAX_BYTES)
    assert [d["_id"] for d in batch.documents] == ["acme/e1", "acme/e2"]
    assert [(r.offset, why[:8]) for r, why in batch.rejects] == [(1, "not JSON")]
    assert batch.committable() == {("audit.events", 2): 3}


def test_an_event_without_id_gets_the_same_id_on_every_redelivery() -> None:
    # A raw Kafka producer may leave out the id; the redelivery of that record
    # (after a crash before the commit) or its replay must find the stored
    # event, not store it a second time under a fresh random id.
    raw = orjson.dumps({"tenant": "acme", "action": "user.login"})
    first, again = decode(rec(raw), LIMITS, MAX_BYTES), decode(rec(raw), LIMITS, MAX_BYTES)
    other = decode(rec(raw, offset=8), LIMITS, MAX_BYTES)
    assert isinstance(first, dict) and isinstance(again, dict) and isinstance(other, dict)
    assert first["id"] == again["id"]
    assert document_content_hash(first) == document_content_hash(again)
    assert other["id"] != first["id"]  # two records are two events, even with equal bytes


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(max_size=60))
def test_search_words_are_the_runs_of_alphanumeric_characters(text: str) -> None:
    """search_terms finds words in one regex pass; the same words as a per-character loop."""
    event = AuditEvent(tenant="acme", action="a.b", description=text)
    loop = "".join(c if c.isalnum() else " " for c in text.lower()).split()
    words = sorted({"a", "b"} | {w for w in loop if len(w) <= 64})
    assert search_terms(event) == [*words, "*", "c:a.b"]


def test_search_words_of_mixed_scripts_and_separators() -> None:
    event = AuditEvent(
        tenant="acme", action="invoice.update", description="Ünïcode_snake-case ٣٤ x²  ÉTÉ"
    )
    assert search_terms(event) == [
        *sorted({"invoice", "update", "ünïcode", "snake", "case", "٣٤", "x²", "été"}),
        *("*", "c:invoice.update"),
    ]
