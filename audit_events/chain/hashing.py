"""Hashing: content hashes, links and sealing of stored documents.

- ``content_hash`` = SHA-256 of the canonical JSON of the event as received,
  recomputed from a stored document by re-validating its event fields.
- ``hash`` = SHA-256(previous hash bytes ‖ content hash bytes ‖ received_at ms);
  the genesis "previous hash" is 32 zero bytes.
"""

from __future__ import annotations

import calendar
import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from audit_events.codec import encode_event
from audit_events.schema import AuditEvent, Limits

GENESIS = "0" * 64
# Stored documents were validated on the way in; re-validation must not reject
# them because a deployment later lowered its limits.
NO_LIMITS = Limits(max_metadata_bytes=2**62, max_metadata_depth=2**30)
_EVENT_FIELDS = frozenset(AuditEvent.model_fields)


def link(prev_hash: str, content_hash: str, received_ms: int | None = None) -> str:
    """``SHA-256(prev ‖ content [‖ received_at])`` over the raw 32-byte digests, as hex.

    ``received_ms`` (``received_at`` in milliseconds since the epoch, 8 bytes
    big-endian, signed) is in every link the processor seals; a chain sealed
    before it was added (no third part) still verifies, see :func:`links`.
    """
    data = bytes.fromhex(prev_hash) + bytes.fromhex(content_hash)
    if received_ms is not None:
        data += received_ms.to_bytes(8, "big", signed=True)
    return hashlib.sha256(data).hexdigest()


def received_ms(value: object) -> int | None:
    """``received_at`` (a datetime or an RFC 3339 string) in ms, as BSON stores it."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000


def links(prev_hash: str, content_hash: str, doc: dict[str, Any]) -> bool:
    """Does ``doc``'s stored ``hash`` chain from ``prev_hash`` and its content?

    The processor seals ``link(prev, content, received_at)``; events sealed
    before ``received_at`` was in the link carry ``link(prev, content)``. Either
    form verifies, and an edited ``received_at`` matches neither: the stored
    hash of an event sealed with its ``received_at`` is neither the link of the
    new time nor the link without one (changing the stored hash breaks the next
    link — a rewrite, which checkpoints catch).
    """
    stored = doc.get("hash")
    ms = received_ms(doc.get("received_at"))
    if ms is not None and link(prev_hash, content_hash, ms) == stored:
        return True
    return link(prev_hash, content_hash) == stored


def event_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The event as received, from a stored document or an API view.

    Keeps only schema fields; stored-only fields such as ``_id``, ``seq``,
    ``hash``, ``search``, ``corrections`` are dropped. The client id is the
    ``id`` field; a document of the layout before ids were per tenant (no
    ``id``, ``_id`` = the client id) reads its id from ``_id``, so its content
    hash is the same before and after ``auditstream migrate-ids``.
    """
    out = {k: v for k, v in doc.items() if k in _EVENT_FIELDS}
    if "id" not in out and "_id" in doc:
        out["id"] = doc["_id"]
    when = out.get("occurred_at")
    if isinstance(when, datetime) and when.tzinfo is None:
        out["occurred_at"] = when.replace(tzinfo=UTC)  # a client without tz_aware=True
    return out


def document_content_hash(doc: dict[str, Any]) -> str:
    """Recompute the content hash of a stored document's original event.

    Raises ``ValueError`` when the stored fields no longer form a valid event.
    """
    try:
        event = AuditEvent.model_validate(event_fields(doc), context={"limits": NO_LIMITS})
    except ValidationError as exc:
        raise ValueError(f"stored fields are not a valid event: {exc.errors()[0]['msg']}") from None
    return hashlib.sha256(encode_event(event)).hexdigest()


def seal(doc: dict[str, Any], seq: int, prev_hash: str, *, content_hash: str | None = None) -> str:
    """Give a new stored document its place in the chain; returns its ``hash``.

    The link covers the content hash and ``received_at`` (as stored: ms).
    ``content_hash``: the document's content hash when the caller computed it
    from the event it just validated (the processor's decode step), which
    spares validating the stored fields again; it must equal
    :func:`document_content_hash` of ``doc``.
    """
    content = content_hash or document_content_hash(doc)
    hash_ = link(prev_hash, content, received_ms(doc.get("received_at")))
    doc["seq"], doc["content_hash"], doc["hash"] = seq, content, hash_
    return hash_


def original_view(view: dict[str, Any]) -> dict[str, Any]:
    """Undo the correction overlay of an API view (offline verification).

    Each correction record carries ``previous``: the values the fields had
    before it (``None`` = absent); applying them newest first restores the
    event as received.
    """
    out = dict(view)
    for record in reversed(view.get("corrections") or []):
        for name, value in (record.get("previous") or {}).items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
    return out
