"""Step 2: decode and validate raw Kafka values into documents to store.

Pure functions: every failure becomes a precise, human-readable reason that
travels to the dead-letter topic with the original bytes. :func:`decode` never
raises: a record that cannot be turned into a document for any reason (a null
value, a timestamp out of range, or an error nobody foresaw) is a reason, never
a crash of the worker (README, Guarantees: bad input never stalls the pipeline).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from audit_events.codec import canonical_json, event_to_document, event_wire_dict
from audit_events.schema import AuditEvent, Limits
from audit_events.topics import partition_key
from stream_processor.records import Batch, Record, unreadable_batch_reason

log = logging.getLogger("auditstream.processor")

# Record timestamps a stored ``received_at`` may take: the Unix epoch to the end
# of year 9999 (what a BSON date and a Python datetime both hold).
MAX_TIMESTAMP_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)
MAX_REASON_CHARS = 1000


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: message; ...`` for at most five errors."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(
    record: Record, limits: Limits, max_bytes: int, *, tenant_keys_only: bool = True
) -> dict[str, Any] | str:
    """Return the document to store for ``record``, or the reason it is rejected.

    ``tenant_keys_only`` (``TENANT_KEYS_ONLY``): a record whose key is not its
    event's tenant is rejected. Never raises (except on interpreter exits such as
    ``KeyboardInterrupt``).
    """
    try:
        return _decode(record, limits, max_bytes, tenant_keys_only)
    except Exception as exc:  # unforeseen: a reason for the DLQ, not a crash loop
        log.warning("record %s/%s@%s: unexpected decode error", *_where(record), exc_info=True)
        reason = f"cannot be processed: {type(exc).__name__}: {exc}"
        return reason[:MAX_REASON_CHARS]


def _where(record: Record) -> tuple[object, object, object]:
    return (record.topic, record.partition, record.offset)


def _decode(
    record: Record, limits: Limits, max_bytes: int, tenant_keys_only: bool
) -> dict[str, Any] | str:
    unreadable = unreadable_batch_reason(record)
    if unreadable is not None:  # the consumer could not parse its batch (records.py)
        return unreadable
    value = record.value
    if value is None:
        return "null value (a tombstone): an audit event must be a JSON object"
    if not isinstance(value, bytes):
        return f"value is a {type(value).__name__}, not bytes"
    ts = record.timestamp_ms
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TIMESTAMP_MS:
        return f"record timestamp {ts!r} is out of range (no valid received time)"
    size = len(value)
    if size > max_bytes:
        return f"oversized: {size} bytes exceeds the limit of {max_bytes}"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    try:
        event = AuditEvent.model_validate_json(text, context={"limits": limits})
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return f"not JSON: {exc.errors()[0]['msg']}"
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            return "not a JSON object"
        return f"invalid event: {describe_validation_error(exc)}"[:MAX_REASON_CHARS]
    if tenant_keys_only and record.key != partition_key(event.tenant):
        # The key places the record: another key (or none) puts a tenant's events on
        # two partitions, whose order is the reader's (replay reads one after the other),
        # so the chain's seqs would not be the log's. Every producer here keys by tenant.
        shown = "null" if record.key is None else repr(record.key[:80])
        return (
            f"record key {shown} is not the tenant {event.tenant!r}: "
            "the key must be the event's tenant (its partition key)"
        )
    received = datetime.fromtimestamp(ts / 1000, tz=UTC)
    updates: dict[str, Any] = {}
    if "occurred_at" not in event.model_fields_set:
        # Not "now" (the schema's default): a redelivery or replay of the record
        # must hash the same, or it would read as another event with the same id.
        # In ms, as the schema's validator stores every occurred_at.
        updates["occurred_at"] = received.replace(microsecond=received.microsecond // 1000 * 1000)
    if "id" not in event.model_fields_set:
        # Likewise for the id (the schema's default is a fresh UUIDv7): derive it
        # from where the record sits in the log and what it holds, so a
        # redelivery or replay finds the stored event instead of adding a copy.
        updates["id"] = record_event_id(record.partition, record.offset, ts, value)
    if updates:
        event = event.model_copy(update=updates)
    # The chain hashes this form: it must serialise here, not in the write. Its
    # hash is the document's content hash, which sealing (Step 5) then need not
    # recompute by validating the stored fields again (``document_content_hash``
    # gives the same; tests/unit/stream_processor/test_decode_fuzz.py checks it).
    wire = event_wire_dict(event)
    doc = event_to_document(event, received, wire)
    doc["content_hash"] = hashlib.sha256(canonical_json(wire)).hexdigest()
    return doc


def record_event_id(partition: int, offset: int, timestamp_ms: int, value: bytes) -> str:
    """A stable id for a record that carries none: the same record, the same id.

    The topic name is left out (a replay may read a renamed topic); the value and
    timestamp are in, so a broker whose offsets start over (a new epoch) never
    gives an earlier event's id to a different record.
    """
    digest = hashlib.sha256(f"{partition}:{offset}:{timestamp_ms}:".encode() + value).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def decode_batch(
    records: list[Record],
    limits: Limits,
    max_bytes: int,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    *,
    tenant_keys_only: bool = True,
) -> Batch:
    """Split ``records`` into documents to store and rejects for the DLQ.

    Each document travels with the record it was decoded from
    (``Batch.accepted``), so a later step that rejects it (a conflict in
    Step 5) dead-letters exactly that record.

    ``check`` (the control-event proof, ``stream_processor.control``) may reject
    a decoded document with a reason.
    """
    batch = Batch(records=records)
    for record in records:
        result = decode(record, limits, max_bytes, tenant_keys_only=tenant_keys_only)
        if not isinstance(result, str) and check is not None:
            result = _checked(check, record, result)
        if isinstance(result, str):
            batch.rejects.append((record, result))
        else:
            batch.accepted.append((record, result))
    return batch


def _checked(
    check: Callable[[dict[str, Any]], str | None], record: Record, doc: dict[str, Any]
) -> dict[str, Any] | str:
    """``check(doc)`` as a reason; an exception in it is a reason too, never a crash."""
    try:
        return check(doc) or doc
    except Exception as exc:
        log.warning("record %s/%s@%s: unexpected check error", *_where(record), exc_info=True)
        return f"cannot be processed: {type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
