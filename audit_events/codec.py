"""Canonical JSON and the translation between events and stored documents.

``canonical_json`` follows RFC 8785 (JCS) where it matters for hashing our
events: object keys sorted, no insignificant whitespace, UTF-8. Our schema only
admits integers, strings, booleans, nulls and finite floats; orjson prints
floats in the shortest round-trip form, which agrees with JCS for every value
except exponent formatting of very large/small magnitudes (documented in
docs/chain.md).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from audit_events.schema import AuditEvent
from audit_events.storage import event_key

_DUMP_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` canonically: sorted keys, compact, UTF-8."""
    return orjson.dumps(value, option=_DUMP_OPTS)


def event_wire_dict(event: AuditEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict, without unset optional fields."""
    return event.model_dump(mode="json", exclude_none=True)


def encode_event(event: AuditEvent) -> bytes:
    """Bytes published to Kafka for ``event`` (canonical JSON)."""
    return canonical_json(event_wire_dict(event))


def content_hash(event: AuditEvent) -> str:
    """SHA-256 (hex) of the event's canonical JSON as received."""
    return hashlib.sha256(encode_event(event)).hexdigest()


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


# A word: a run of characters for which str.isalnum() is true (re's \w is
# isalnum() or "_"), found in one regex pass instead of a Python loop per character.
_WORD = re.compile(r"[^\W_]+")


# Index tokens in the ``search`` array beside the words (issue 18): one multikey index
# ``tenant_search_time`` serves every indexed list filter. A word is alphanumeric only,
# so no word is ever equal to a token (``*`` or a ``x:`` prefix).
ALL_TOKEN = "*"  # every stored event: the unfiltered list walks it


def action_token(action: str) -> str:
    """The ``search`` token of the exact ``action`` filter."""
    return "c:" + action


def actor_token(actor_id: str) -> str:
    """The ``search`` token of the ``actor`` (id) filter."""
    return "a:" + actor_id


def target_token(target_id: str) -> str:
    """The ``search`` token of the ``target_id`` filter (one per target)."""
    return "t:" + target_id


def _words(parts: list[str]) -> list[str]:
    terms: set[str] = set()
    for part in parts:
        for word in _WORD.findall(part.lower()):  # runs of str.isalnum() characters
            if len(word) <= 64:
                terms.add(word)
    return sorted(terms)


def _tokens(action: object, actor: object, targets: object) -> list[str]:
    out = [ALL_TOKEN]
    if isinstance(action, str):
        out.append(action_token(action))
    if isinstance(actor, dict) and isinstance(actor.get("id"), str):
        out.append(actor_token(actor["id"]))
    if isinstance(targets, list):
        ids = {t["id"] for t in targets if isinstance(t, dict) and isinstance(t.get("id"), str)}
        out += [target_token(i) for i in sorted(ids)]
    return out


def search_terms(event: AuditEvent) -> list[str]:
    """The stored ``search`` array: the normalised words of the ``q`` filter (no
    ``$text`` index needed) — action, description, actor and target ids and names —
    then the index tokens: :data:`ALL_TOKEN`, the exact action, the actor id and
    each target id (:func:`action_token`, :func:`actor_token`, :func:`target_token`)."""
    parts: list[str] = [event.action, *event.action.split(".")]
    if event.description:
        parts.append(event.description)
    if event.actor:
        parts += [event.actor.id, event.actor.name or ""]
    for t in event.targets:
        parts += [t.id, t.name or ""]
    actor = {"id": event.actor.id} if event.actor else None
    return _words(parts) + _tokens(event.action, actor, [{"id": t.id} for t in event.targets])


def document_search_terms(doc: dict[str, Any]) -> list[str]:
    """The ``search`` array :func:`event_to_document` gives ``doc``'s fields today.

    Read from a stored document (its top-level fields, which corrections never
    change). An erased document keeps only the tokens of what erasure keeps (the
    action, and the targets of an erased correction): no words, so ``q`` never
    matches a tombstone, while ``include_erased`` reads still find it.
    """
    action, actor, targets = doc.get("action"), doc.get("actor"), doc.get("targets")
    tokens = _tokens(action, actor, targets)
    if "erased" in doc:
        return tokens
    parts: list[str] = []
    if isinstance(action, str):
        parts += [action, *action.split(".")]
    if isinstance(doc.get("description"), str):
        parts.append(doc["description"])
    for item in ([actor] if isinstance(actor, dict) else []) + (
        targets if isinstance(targets, list) else []
    ):
        if isinstance(item, dict):
            parts += [v for v in (item.get("id"), item.get("name")) if isinstance(v, str)]
    return _words(parts) + tokens


def event_to_document(
    event: AuditEvent, received_at: datetime, wire: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The MongoDB document for ``event``, BSON datetimes for ranges.

    ``_id`` = :func:`~audit_events.storage.event_key` (tenant, id): identity is
    per tenant. The client's id stays in the ``id`` field. ``wire``: the
    event's :func:`event_wire_dict` when the caller has it already (not changed).
    """
    wire = event_wire_dict(event) if wire is None else wire
    doc = {"_id": event_key(event.tenant, event.id), **wire}
    doc["occurred_at"] = event.occurred_at.astimezone(UTC)
    doc["received_at"] = received_at.astimezone(UTC)
    doc["search"] = search_terms(event)
    return doc


def current_layout(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as :func:`event_to_document` lays it out today.

    A document written before ids were per tenant (``_id`` = the client id, no
    ``id`` field) gets ``id`` = its old ``_id`` and ``_id`` = ``event_key(tenant,
    id)``; every other field (seq, hashes, corrections, erasure) is kept as is.
    Documents already in the current layout are returned unchanged.
    """
    if "id" in doc:
        return doc
    rest = {k: v for k, v in doc.items() if k != "_id"}
    return {"_id": event_key(str(doc["tenant"]), str(doc["_id"])), "id": doc["_id"], **rest}


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Objects a correction amends field by field: ``{"actor": {"id": "u-2"}}`` keeps the
# actor's type and name. Merged when the correction is read, in log order, so two
# corrections of one object made at once (each from a view without the other) both
# hold: the API publishes only the fields the admin named.
MERGED_FIELDS = ("actor", "source", "context")


def corrected(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` with one correction's ``changes`` applied."""
    out = {**current, **changes}
    for name in MERGED_FIELDS:
        old, new = current.get(name), changes.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            out[name] = {**old, **new}
    return out


def corrected_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The stored fields with every correction's ``set`` applied, oldest first."""
    out = dict(doc)
    for record in doc.get("corrections") or ():
        out = corrected(out, record.get("set") or {})
    return out


def document_to_api(doc: dict[str, Any]) -> dict[str, Any]:
    """The public JSON view of a stored document.

    A corrected event reads as its corrected view plus ``corrections`` (who,
    when, why, what); an erased one is a tombstone with ``erased`` (who, when,
    why) — readers answer 410 for it (docs/chain.md).
    """
    view = corrected_view(doc) if doc.get("corrections") else doc
    out = {k: v for k, v in view.items() if k not in ("_id", "search")}
    # Documents written before ids were per tenant (``_id`` = id, no ``id`` field)
    # read the same until ``auditstream migrate-ids`` rewrites them.
    out = {"id": doc["id"] if "id" in doc else doc["_id"], **out}
    for key in ("occurred_at", "received_at"):
        if isinstance(out.get(key), datetime):
            out[key] = _iso(out[key])
    if out.get("corrections"):
        out["corrections"] = [_with_iso_at(r) for r in out["corrections"]]
    if out.get("erased"):
        out["erased"] = _with_iso_at(out["erased"])
    return out


def _with_iso_at(record: dict[str, Any]) -> dict[str, Any]:
    at = record.get("at")
    return {**record, "at": _iso(at)} if isinstance(at, datetime) else record


__all__ = [
    "ALL_TOKEN",
    "MERGED_FIELDS",
    "_parse_time",
    "action_token",
    "actor_token",
    "canonical_json",
    "content_hash",
    "corrected",
    "corrected_view",
    "current_layout",
    "document_search_terms",
    "document_to_api",
    "encode_event",
    "event_to_document",
    "event_wire_dict",
    "search_terms",
    "target_token",
]
