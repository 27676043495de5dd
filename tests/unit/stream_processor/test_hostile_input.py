"""Issue 14 items 1-4: hostile records never crash decode; one validator for API and processor."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from audit_events.schema import AuditEvent, Limits
from audit_events.settings import AuditSettings
from stream_processor.decode import decode
from stream_processor.records import Record

pytestmark = pytest.mark.unit

LIMITS = Limits()
MAX_BYTES = 256 * 1024
EDGES = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")


def rec(value: bytes | None, key: bytes | None = b"acme", ts: int = 1_700_000_000_000) -> Record:
    return Record("audit.events", 0, 3, ts, key, value)


def ev(**fields: Any) -> dict[str, Any]:
    return {"id": "e1", "tenant": "acme", "action": "a.b", **fields}


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"d": value}
    return value


def test_a_tombstone_record_is_a_reason_not_a_crash() -> None:
    result = decode(rec(None, key=None), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and result.startswith("null value")


@pytest.mark.parametrize("when", EDGES)
def test_occurred_at_beyond_the_utc_calendar_is_a_validation_error(when: str) -> None:
    with pytest.raises(ValidationError, match="occurred_at"):
        AuditEvent.model_validate(ev(occurred_at=when))
    result = decode(rec(orjson.dumps(ev(occurred_at=when))), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and result.startswith("invalid event: occurred_at")


@pytest.mark.parametrize("ts", [-1, 2**62, -(2**62)])
def test_a_record_timestamp_out_of_range_is_a_reason(ts: int) -> None:
    result = decode(rec(orjson.dumps(ev()), ts=ts), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and "timestamp" in result


@pytest.mark.parametrize("side", ["old", "new"])
def test_changes_are_depth_bounded_like_metadata(side: str) -> None:
    ok = ev(changes={"f": {side: nested(LIMITS.max_metadata_depth)}})
    AuditEvent.model_validate(ok)
    deep = ev(changes={"f": {side: nested(LIMITS.max_metadata_depth + 1)}})
    with pytest.raises(ValidationError, match="nested deeper"):
        AuditEvent.model_validate(deep)
    result = decode(rec(orjson.dumps(deep)), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and "nested deeper" in result


def test_199_levels_in_changes_old_are_refused_by_the_shared_validator() -> None:
    # the API validated the parsed body (202); the processor failed to parse it
    body = ev(changes={"f": {"old": nested(199)}})
    with pytest.raises(ValidationError):
        AuditEvent.model_validate(body)


def test_mongodb_depth_is_counted_in_whatever_the_configured_limit() -> None:
    generous = Limits(max_metadata_depth=500)
    with pytest.raises(ValidationError, match="nested deeper"):
        AuditEvent.model_validate(ev(metadata=nested(98)), context={"limits": generous})
    with pytest.raises(ValidationError, match="nested deeper"):
        AuditEvent.model_validate(
            ev(changes={"f": {"old": nested(98)}}), context={"limits": generous}
        )


@pytest.mark.parametrize("side", ["old", "new"])
def test_changes_keys_are_checked_like_metadata(side: str) -> None:
    for bad in ({"$set": 1}, {"a.b": 1}, {"a\x00": 1}):
        with pytest.raises(ValidationError, match="must not start with"):
            AuditEvent.model_validate(ev(changes={"f": {side: bad}}))


def test_a_control_event_may_wrap_a_correction_of_values_at_the_limit() -> None:
    # metadata.set.changes.<f>.old at the depth limit, as the API builds it (admin.py)
    limit = LIMITS.max_metadata_depth
    wrapped = {"set": {"changes": {"f": {"old": nested(limit)}}, "metadata": nested(limit)}}
    AuditEvent.model_validate(ev(action="auditstream.event.corrected", metadata=wrapped))
    with pytest.raises(ValidationError, match="nested deeper"):
        AuditEvent.model_validate(ev(metadata=wrapped))  # an ordinary event may not
    too_deep = {"set": {"changes": {"f": {"old": nested(limit + 1)}}}}
    with pytest.raises(ValidationError, match="nested deeper"):
        AuditEvent.model_validate(ev(action="auditstream.event.corrected", metadata=too_deep))


NON_FINITE = (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400")


@pytest.mark.parametrize("number", NON_FINITE)
@pytest.mark.parametrize(
    "template",
    [b'{"metadata":{"x":%s}}', b'{"metadata":{"l":[1,{"y":%s}]}}', b'{"changes":{"f":{"new":%s}}}'],
)
def test_nan_and_infinity_are_refused_not_stored_as_null(template: bytes, number: bytes) -> None:
    # JSON has no such numbers; they were parsed, then published and hashed as null:
    # the stored event was not the one received (and 202 for a value never kept).
    raw = b'{"id":"e1","tenant":"acme","action":"a.b",' + (template % number)[1:]
    with pytest.raises(ValidationError, match="not a finite number"):
        AuditEvent.model_validate_json(raw)
    result = decode(rec(raw), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and "not a finite number" in result, result


@pytest.mark.parametrize("key", [b"globex", None, b"", b"ACME", b"acme ", "acme".encode("utf-16")])
def test_a_record_keyed_other_than_its_tenant_is_a_reason(key: bytes | None) -> None:
    # Its tenant's events would sit on two partitions: the chain's order then depends
    # on which partition a worker (or replay, partition after partition) reads first.
    result = decode(rec(orjson.dumps(ev()), key=key), LIMITS, MAX_BYTES)
    assert isinstance(result, str) and result.startswith("record key "), result
    assert "is not the tenant 'acme'" in result
    assert not isinstance(decode(rec(orjson.dumps(ev()), key=b"acme"), LIMITS, MAX_BYTES), str)
    # TENANT_KEYS_ONLY=false: a topic written before the check (producers that did not
    # key by tenant) is stored and replayed as it was
    kept = decode(rec(orjson.dumps(ev()), key=key), LIMITS, MAX_BYTES, tenant_keys_only=False)
    assert isinstance(kept, dict) and kept["tenant"] == "acme", kept


def test_tenant_keys_only_is_a_setting_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDITSTREAM_TENANT_KEYS_ONLY", raising=False)
    assert AuditSettings().tenant_keys_only is True
    monkeypatch.setenv("AUDITSTREAM_TENANT_KEYS_ONLY", "false")
    assert AuditSettings().tenant_keys_only is False


class _RawName(str):
    """A header name whose wire bytes are not UTF-8 (the protocol says they are)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-h"


@pytest.mark.parametrize("compression", [0, 1])  # none, gzip
def test_a_batch_with_a_header_name_that_is_not_utf8_is_read_not_raised(
    compression: int,
) -> None:
    from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
    from aiokafka.record.memory_records import MemoryRecords

    from stream_processor.records import _TolerantMemoryRecords

    builder = _DefaultRecordBatchBuilderPy(2, compression, 0, -1, -1, -1, 1 << 20)
    builder.append(0, 1_000, b"acme", b"first", [])
    builder.append(1, 1_001, b"acme", b"bad", [(_RawName("h"), b"v"), ("ok", None)])
    builder.append(2, 1_002, b"acme", b"after", [("ok", b"1")])
    raw = bytes(builder.build())
    with pytest.raises(UnicodeDecodeError):  # aiokafka's own (C) parser: every fetch failed
        list(DefaultRecordBatch(raw))
    with pytest.raises(UnicodeDecodeError):
        list(MemoryRecords(raw).next_batch())
    records = _TolerantMemoryRecords(raw)
    batch = records.next_batch()
    assert batch.validate_crc() and batch.next_offset == 3 and not records.has_next()
    got = [(r.offset, r.key, r.value, r.headers) for r in batch]
    assert got == [
        (0, b"acme", b"first", []),
        (1, b"acme", b"bad", [("\\xff\\xfe-h", b"v"), ("ok", None)]),
        (2, b"acme", b"after", [("ok", b"1")]),
    ]


def _batch(compression: int = 0) -> bytes:
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    builder = _DefaultRecordBatchBuilderPy(2, compression, 0, -1, -1, -1, 1 << 20)
    for offset in range(3):
        builder.append(offset, 1_000 + offset, b"acme", b"value %d" % offset, [])
    return bytes(builder.build())


def _resealed(raw: bytes) -> bytes:
    """``raw`` with the CRC a producer computes over it (from the attributes, byte 21)."""
    from aiokafka.record.util import calc_crc32c

    return raw[:17] + calc_crc32c(raw[21:]).to_bytes(4, "big") + raw[21:]


def _garbled(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


@pytest.mark.parametrize(
    ("name", "raw", "why"),
    [
        ("CRC", _garbled(_batch(), -3), "its CRC does not match"),  # a value byte
        ("unknown codec", _resealed(_batch()[:22] + b"\x07" + _batch()[23:]), "codec"),
        ("not gzip", _resealed(_batch(1)[:61] + b"garbage" + _batch(1)[68:]), "gzip"),
    ],
)
def test_a_batch_that_cannot_be_read_becomes_one_record_for_the_dlq(
    name: str, raw: bytes, why: str
) -> None:
    from stream_processor.records import _TolerantMemoryRecords

    batch = _TolerantMemoryRecords(raw).next_batch()
    assert batch.validate_crc()  # the fetcher raised at every fetch on a mismatch
    (only,) = list(batch)
    assert only.offset == 2 and only.value == raw  # the batch's last offset, its bytes
    record = Record("t", 0, only.offset, only.timestamp, only.key, only.value, only.headers)
    result = decode(record, LIMITS, MAX_BYTES)
    assert isinstance(result, str) and result.startswith("unreadable record batch"), result
    assert why in result


def test_a_batch_whose_records_lie_about_their_offsets_is_dead_lettered_whole() -> None:
    # Three records under a header that claims one (last offset delta 0): Tansu then
    # gives the next batch the offsets these records claim, and a consumer that took
    # them committed past the next producer's events (read once, then skipped).
    from stream_processor.records import _TolerantMemoryRecords

    raw = _batch()
    lying = _resealed(raw[:23] + (0).to_bytes(4, "big") + raw[27:])
    (only,) = list(_TolerantMemoryRecords(lying).next_batch())
    assert only.offset == 0 and only.value == lying
    record = Record("t", 0, only.offset, only.timestamp, only.key, only.value, only.headers)
    result = decode(record, LIMITS, MAX_BYTES)
    assert isinstance(result, str) and "offsets" in result, result
    honest = [r.offset for r in _TolerantMemoryRecords(raw).next_batch()]
    assert honest == [0, 1, 2]
