"""Control events (corrections, erasures) and the API's proof that it issued them.

Corrections and erasures are events on the shared topic; any service that can
write it could publish one. The API alone holds the control signing key: it
signs the canonical JSON of the control event without ``metadata.proof`` and
puts ``{kid, sig}`` there. The processor, replay and verifiers hold only the
public keys (chosen by ``kid``, so keys can rotate) and refuse everything in
the reserved namespace that does not carry a valid proof.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from audit_events.chain.checkpoints import key_id, load_private_key, load_public_key, public_key_b64
from audit_events.chain.hashing import NO_LIMITS
from audit_events.codec import canonical_json, encode_event
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, SettingsError

CORRECTED_ACTION = "auditstream.event.corrected"
ERASED_ACTION = "auditstream.event.erased"
CONTROL_ACTIONS = (CORRECTED_ACTION, ERASED_ACTION)
RESERVED_ACTION_PREFIX = "auditstream."
# Read auditing (query_api/read_audit.py): who read the log. Signed like control
# events, so no producer can forge one, but applied to nothing.
READ_ACTION_PREFIX = "auditstream.log."
VIEWED_ACTION = "auditstream.log.viewed"
EXPORTED_ACTION = "auditstream.log.exported"
VERIFIED_ACTION = "auditstream.log.verified"
READ_ACTIONS = (VIEWED_ACTION, EXPORTED_ACTION, VERIFIED_ACTION)
# Every action of the reserved namespace the API issues (with a proof).
SIGNED_ACTIONS = CONTROL_ACTIONS + READ_ACTIONS
# Payload fields an erasure removes; id, tenant, times, action, seq and hashes stay.
ERASED_FIELDS = ("actor", "targets", "description", "changes", "metadata", "context", "search")
# Fields a correction may set (everything but the identity of the event).
CORRECTABLE_FIELDS = frozenset(AuditEvent.model_fields) - {"id", "tenant"}

PROOF_FIELD = "proof"


def is_reserved(action: object) -> bool:
    """True for actions in the ``auditstream.`` namespace (only the API may issue them)."""
    return isinstance(action, str) and action.startswith(RESERVED_ACTION_PREFIX)


def _without_proof(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and PROOF_FIELD in metadata:
        rest = {k: v for k, v in metadata.items() if k != PROOF_FIELD}
        if rest:
            out["metadata"] = rest
        else:
            out.pop("metadata")
    return out


def control_payload(fields: dict[str, Any]) -> bytes:
    """The bytes a control event's proof signs: its canonical JSON without ``metadata.proof``.

    ``fields`` are the event's schema fields (an event's JSON, or
    :func:`event_fields` of a stored document). Raises ``ValueError`` when they
    do not form a valid event.
    """
    try:
        event = AuditEvent.model_validate(_without_proof(fields), context={"limits": NO_LIMITS})
    except ValidationError as exc:
        raise ValueError(f"not a valid event: {exc.errors()[0]['msg']}") from None
    return encode_event(event)


@functools.lru_cache(maxsize=8)
def _signing_kid(key: Ed25519PrivateKey) -> str:
    """The key id of ``key``'s public key, derived once per key (~16 µs; the API
    signs one read-audit event per read)."""
    return key_id(public_key_b64(key))


def sign_control(
    key: Ed25519PrivateKey, fields: dict[str, Any], *, wire: bool = False
) -> dict[str, Any]:
    """``fields`` (a validated event's JSON) with ``metadata.proof = {kid, sig}`` added.

    ``fields`` must hold ``id`` and ``occurred_at``: defaults filled in later
    would change the signed bytes. ``wire=True``: ``fields`` are exactly
    ``event_wire_dict`` of a validated event without a proof, so their canonical
    JSON is the payload and is not validated again (the API's read-audit events,
    one per read: query_api/read_audit.py).
    """
    if not {"id", "occurred_at"} <= fields.keys():
        raise ValueError("sign a complete event: id and occurred_at are required")
    payload = canonical_json(fields) if wire else control_payload(fields)
    signature = key.sign(payload)
    proof = {"kid": _signing_kid(key), "sig": base64.b64encode(signature).decode()}
    return {**fields, "metadata": {**(fields.get("metadata") or {}), PROOF_FIELD: proof}}


def control_problem(fields: dict[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Why ``fields`` (an event in the reserved namespace) is not an authentic control event.

    ``None`` when it is a correction, erasure or read-audit event
    (:data:`SIGNED_ACTIONS`) carrying a valid proof by one of
    ``keys`` (key id → public key). The signature covers every field, so the same
    proof under another tenant, target, id or content does not verify.
    """
    action = fields.get("action")
    if action not in SIGNED_ACTIONS:
        return f"unknown action {str(action)[:100]!r} in the reserved namespace"
    metadata = fields.get("metadata")
    proof = metadata.get(PROOF_FIELD) if isinstance(metadata, dict) else None
    if not isinstance(proof, dict) or not all(
        isinstance(proof.get(k), str) for k in ("kid", "sig")
    ):
        return "no proof (metadata.proof {kid, sig}) that the API issued it"
    key = keys.get(proof["kid"])
    if key is None and not keys:
        return "no control public key is configured to check its proof"
    if key is None:
        return f"signed by unknown key id {proof['kid'][:64]!r}"
    try:
        payload = control_payload(fields)
        key.verify(base64.b64decode(proof["sig"], validate=True), payload)
    except (ValueError, binascii.Error, InvalidSignature):
        return "its signature does not cover this tenant, target and content"
    return None


def control_keys(settings: AuditSettings) -> dict[str, Ed25519PublicKey]:
    """The public keys control events may be signed with, by key id.

    ``control_public_keys`` plus the one derived from ``control_signing_key``
    (the API checks what it signs itself). Raises :class:`SettingsError` for a
    key that is not base64 of 32 raw bytes.
    """
    publics = list(settings.control_public_keys)
    if settings.control_signing_key is not None:
        try:
            private = load_private_key(settings.control_signing_key.get_secret_value())
        except ValueError as exc:
            raise SettingsError(f"invalid setting AUDITSTREAM_CONTROL_SIGNING_KEY: {exc}") from None
        publics.append(public_key_b64(private))
    out: dict[str, Ed25519PublicKey] = {}
    for public in publics:
        try:
            out[key_id(public)] = load_public_key(public)
        except ValueError as exc:
            raise SettingsError(f"invalid setting AUDITSTREAM_CONTROL_PUBLIC_KEYS: {exc}") from None
    return out
