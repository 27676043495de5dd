"""Issue 14 item 3: the DLQ record always fits the broker's limit, and says what it kept."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from stream_processor.records import Record
from stream_processor.sinks import dead_letter_key, dead_letter_value

pytestmark = pytest.mark.unit

LIMIT = 512 * 1024  # the default AUDITSTREAM_DLQ_MAX_RECORD_BYTES
KAFKA_DEFAULT = 1024 * 1024


def rec(value: bytes | None, key: bytes | None = b"acme") -> Record:
    return Record("audit.events", 1, 42, 1_700_000_000_000, key, value)


def letter(record: Record, reason: str = "oversized", limit: int = LIMIT) -> dict[str, object]:
    raw = dead_letter_value(record, reason, max_bytes=limit)
    key = dead_letter_key(record)
    assert len(raw) + len(key or b"") <= limit < KAFKA_DEFAULT
    out: dict[str, object] = orjson.loads(raw)
    return out


@pytest.mark.parametrize(
    ("value", "truncated"),
    [
        (b"a" * (1024 * 1024), True),  # as large as the broker took: cut, hash of the whole
        (b"\x01" * (180 * 1024), False),  # was 1 MiB+ JSON-escaped; 240 KiB as base64
        (bytes(range(256)) * 4096, True),
    ],
)
def test_a_huge_or_escape_heavy_record_fits_with_the_hash_of_the_whole(
    value: bytes, truncated: bool
) -> None:
    out = letter(rec(value))
    assert out["original_truncated"] is truncated
    assert out["original_size"] == len(value)
    assert out["original_sha256"] == hashlib.sha256(value).hexdigest()
    kept = base64.b64decode(str(out["original"]))
    assert value.startswith(kept) and len(kept) >= min(len(value), LIMIT // 2)
    assert (kept == value) is not truncated


def test_a_small_record_is_kept_whole_and_exact() -> None:
    value = b'{"tenant": "acme", "action": "\xc3\x28"}\x00\x01\xff'
    out = letter(rec(value), "not UTF-8")
    assert out["original_encoding"] == "base64" and out["original_truncated"] is False
    assert base64.b64decode(str(out["original"])) == value
    assert out["reason"] == "not UTF-8"
    assert out["source"] == {
        "topic": "audit.events",
        "partition": 1,
        "offset": 42,
        "timestamp_ms": 1_700_000_000_000,
    }


def test_a_tombstone_and_a_huge_key_and_reason_still_fit() -> None:
    out = letter(rec(None, key=b"k" * 200_000), "r" * 100_000, limit=64 * 1024)
    assert out["original"] is None and out["original_size"] is None
    assert dead_letter_key(rec(None, key=b"k" * 200_000)) is None  # kept in the value instead
    key = out["key"]
    assert isinstance(key, dict) and key["size"] == 200_000 and key["truncated"] is True
    assert len(str(out["reason"])) < 100_000
