"""Step 1+2: decode and validate raw Kafka values into stored documents.

Pure functions: every failure becomes a precise, human-readable reason that
travels to the dead-letter topic with the original bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent, Limits
from stream_processor.records import Batch, Record


def describe_validation_error(exc: ValidationError) -> str:
    """``field.path: message; ...`` for at most five errors."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(record: Record, limits: Limits, max_bytes: int) -> dict[str, Any] | str:
    """Return the document to store for ``record``, or the reason it is rejected."""
    size = len(record.value)
    if size > max_bytes:
        return f"oversized: {size} bytes exceeds the limit of {max_bytes}"
    try:
        text = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    try:
        event = AuditEvent.model_validate_json(text, context={"limits": limits})
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return f"not JSON: {exc.errors()[0]['msg']}"
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            return "not a JSON object"
        return f"invalid event: {describe_validation_error(exc)}"
    received = datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)
    if "occurred_at" not in event.model_fields_set:
        # Not "now" (the schema's default): a redelivery or replay of the record
        # must hash the same, or it would read as another event with the same id.
        event = event.model_copy(update={"occurred_at": received})
    return event_to_document(event, received)


def decode_batch(
    records: list[Record],
    limits: Limits,
    max_bytes: int,
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> Batch:
    """Split ``records`` into documents to store and rejects for the DLQ.

    ``check`` (the control-event proof, ``stream_processor.control``) may reject
    a decoded document with a reason.
    """
    batch = Batch(records=records)
    for record in records:
        result = decode(record, limits, max_bytes)
        if not isinstance(result, str) and check is not None:
            result = check(result) or result
        if isinstance(result, str):
            batch.rejects.append((record, result))
        else:
            batch.documents.append(result)
    return batch
