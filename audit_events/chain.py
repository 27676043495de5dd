"""The tenant chain: content hashes, links, signed checkpoints and verification.

Pure logic shared by the processor (which builds the chain), the API and the
CLI (which verify it) and the offline verifier. No database client here: the
verifier walks any async iterator of stored documents sorted by ``(seq, _id)``.

- ``content_hash`` = SHA-256 of the canonical JSON of the event as received,
  recomputed from a stored document by re-validating its event fields.
- ``hash`` = SHA-256(previous hash bytes ‖ content hash bytes); the genesis
  "previous hash" is 32 zero bytes.
- A checkpoint signs ``{tenant, seq, hash, time}`` (canonical JSON) with Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from audit_events.codec import canonical_json, encode_event
from audit_events.schema import AuditEvent, Limits
from audit_events.settings import AuditSettings, SettingsError

GENESIS = "0" * 64
CORRECTED_ACTION = "auditstream.event.corrected"
ERASED_ACTION = "auditstream.event.erased"
CONTROL_ACTIONS = (CORRECTED_ACTION, ERASED_ACTION)
RESERVED_ACTION_PREFIX = "auditstream."
# Payload fields an erasure removes; id, tenant, times, action, seq and hashes stay.
ERASED_FIELDS = ("actor", "targets", "description", "changes", "metadata", "context", "search")
# Fields a correction may set (everything but the identity of the event).
CORRECTABLE_FIELDS = frozenset(AuditEvent.model_fields) - {"id", "tenant"}
# Stored documents were validated on the way in; re-validation must not reject
# them because a deployment later lowered its limits.
_NO_LIMITS = Limits(max_metadata_bytes=2**62, max_metadata_depth=2**30)
_EVENT_FIELDS = frozenset(AuditEvent.model_fields)

REASONS = (
    "edited",
    "deleted",
    "reordered",
    "inserted",
    "truncated",
    "rewritten",
    "bad_checkpoint",
    "forged_control",
    "bad_erasure",
    "bad_correction",
)


# --- hashing -----------------------------------------------------------------


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
        event = AuditEvent.model_validate(event_fields(doc), context={"limits": _NO_LIMITS})
    except ValidationError as exc:
        raise ValueError(f"stored fields are not a valid event: {exc.errors()[0]['msg']}") from None
    return hashlib.sha256(encode_event(event)).hexdigest()


def seal(doc: dict[str, Any], seq: int, prev_hash: str) -> str:
    """Give a new stored document its place in the chain; returns its ``hash``.

    The link covers the content hash and ``received_at`` (as stored: ms).
    """
    content = document_content_hash(doc)
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


# --- keys and checkpoints ----------------------------------------------------


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (private, public), each base64 of the raw 32 bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(private).decode(), public_key_b64(key)


def load_private_key(b64: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(b64))


def load_public_key(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def key_id(public_b64: str) -> str:
    """Short fingerprint of a public key, stored beside each signature."""
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def _checkpoint_payload(tenant: str, seq: int, hash_: str, time: str) -> bytes:
    return canonical_json({"tenant": tenant, "seq": seq, "hash": hash_, "time": time})


def sign_checkpoint(
    key: Ed25519PrivateKey, tenant: str, seq: int, hash_: str, now: datetime
) -> dict[str, Any]:
    """A signed checkpoint of ``tenant``'s chain head (JSON-ready dict)."""
    time = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    signature = key.sign(_checkpoint_payload(tenant, seq, hash_, time))
    return {
        "tenant": tenant,
        "seq": seq,
        "hash": hash_,
        "time": time,
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id(public_key_b64(key)),
    }


def checkpoint_valid(key: Ed25519PublicKey, checkpoint: dict[str, Any]) -> bool:
    """True when ``checkpoint``'s signature covers its tenant, seq, hash and time."""
    try:
        payload = _checkpoint_payload(
            str(checkpoint["tenant"]),
            int(checkpoint["seq"]),
            str(checkpoint["hash"]),
            str(checkpoint["time"]),
        )
        key.verify(base64.b64decode(checkpoint["signature"]), payload)
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


#: What a verifier trusts: public keys by key id (the current one and retired
#: ones, so checkpoints signed before a rotation keep verifying), one key, or none.
TrustedKeys = Mapping[str, Ed25519PublicKey] | Ed25519PublicKey | None


def key_ring(keys: TrustedKeys) -> dict[str, Ed25519PublicKey]:
    """``keys`` as ``{key_id: public key}``."""
    if keys is None:
        return {}
    if isinstance(keys, Ed25519PublicKey):
        raw = keys.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {key_id(base64.b64encode(raw).decode()): keys}
    return dict(keys)


def checkpoint_problem(
    keys: Mapping[str, Ed25519PublicKey], checkpoint: dict[str, Any]
) -> str | None:
    """Why ``checkpoint`` is not validly signed by one of ``keys``, or None.

    The key is chosen by the checkpoint's ``key_id`` (not covered by the
    signature: it only picks the key; a wrong one cannot make a forgery verify).
    A checkpoint without a key id is tried against every trusted key.
    """
    if not keys:
        return "no public key to check it"
    kid = checkpoint.get("key_id")
    if isinstance(kid, str):
        key = keys.get(kid)
        if key is None:
            return (
                f"signed by key id {kid[:64]!r}, which is neither the current key nor a"
                " retired one (AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS)"
            )
        candidates = [key]
    else:
        candidates = list(keys.values())
    if any(checkpoint_valid(key, checkpoint) for key in candidates):
        return None
    return "its signature is invalid"


# --- control events: the API's proof ----------------------------------------
#
# Corrections and erasures are events on the shared topic; any service that can
# write it could publish one. The API alone holds the control signing key: it
# signs the canonical JSON of the control event without ``metadata.proof`` and
# puts ``{kid, sig}`` there. The processor, replay and verifiers hold only the
# public keys (chosen by ``kid``, so keys can rotate) and refuse everything in
# the reserved namespace that does not carry a valid proof.

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
        event = AuditEvent.model_validate(_without_proof(fields), context={"limits": _NO_LIMITS})
    except ValidationError as exc:
        raise ValueError(f"not a valid event: {exc.errors()[0]['msg']}") from None
    return encode_event(event)


def sign_control(key: Ed25519PrivateKey, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (a validated event's JSON) with ``metadata.proof = {kid, sig}`` added.

    ``fields`` must hold ``id`` and ``occurred_at``: defaults filled in later
    would change the signed bytes.
    """
    if not {"id", "occurred_at"} <= fields.keys():
        raise ValueError("sign a complete event: id and occurred_at are required")
    signature = key.sign(control_payload(fields))
    proof = {"kid": key_id(public_key_b64(key)), "sig": base64.b64encode(signature).decode()}
    return {**fields, "metadata": {**(fields.get("metadata") or {}), PROOF_FIELD: proof}}


def control_problem(fields: dict[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Why ``fields`` (an event in the reserved namespace) is not an authentic control event.

    ``None`` when it is a correction or erasure carrying a valid proof by one of
    ``keys`` (key id → public key). The signature covers every field, so the same
    proof under another tenant, target, id or content does not verify.
    """
    action = fields.get("action")
    if action not in CONTROL_ACTIONS:
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


# --- verification ------------------------------------------------------------


@dataclass
class Report:
    """Outcome of walking one tenant's chain; ``ok`` is False at the first defect."""

    tenant: str
    ok: bool = True
    checked: int = 0
    first_bad_seq: int | None = None
    first_bad_id: str | None = None  # the bad event's id (None: it is missing)
    reason: str | None = None
    detail: str | None = None
    head_seq: int = 0
    head_hash: str = GENESIS
    erased: int = 0
    corrected: int = 0
    checkpoints: int = 0
    latest_checkpoint_seq: int = 0
    unsigned_tail: int = 0

    def fail(self, seq: int, reason: str, detail: str, event_id: object = None) -> Report:
        self.ok, self.first_bad_seq, self.reason, self.detail = False, seq, reason, detail
        self.first_bad_id = None if event_id is None else str(event_id)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Checkpoints:
    by_seq: dict[int, str] = field(default_factory=dict)
    latest: int = 0


def _check_checkpoints(
    report: Report, tenant: str, checkpoints: Iterable[dict[str, Any]], keys: TrustedKeys
) -> _Checkpoints | None:
    out = _Checkpoints()
    ring = key_ring(keys)
    for cp in checkpoints:
        if cp.get("tenant") != tenant:
            continue
        seq = int(cp.get("seq", 0))
        why = checkpoint_problem(ring, cp)
        if why is not None:
            report.fail(seq, "bad_checkpoint", f"checkpoint at seq {seq}: {why}")
            return None
        if out.by_seq.get(seq, cp["hash"]) != cp["hash"]:
            report.fail(seq, "bad_checkpoint", f"two signed checkpoints disagree at seq {seq}")
            return None
        out.by_seq[seq] = cp["hash"]
        out.latest = max(out.latest, seq)
    report.checkpoints = len(out.by_seq)
    report.latest_checkpoint_seq = out.latest
    return out


def _content_of(doc: dict[str, Any]) -> tuple[str | None, str]:
    """(recomputed content hash, why not); erased documents keep the stored one."""
    if doc.get("erased"):
        stored = doc.get("content_hash")
        return (stored, "") if isinstance(stored, str) else (None, "erased without content_hash")
    try:
        return document_content_hash(doc), ""
    except ValueError as exc:
        return None, str(exc)


ControlLookup = Callable[[str], Awaitable[dict[str, Any] | None]]


def event_id_of(doc: dict[str, Any]) -> str | None:
    """The client's id of a stored document (``_id`` in the layout before per-tenant ids)."""
    value = doc.get("id", doc.get("_id"))
    return None if value is None else str(value)


def _control_target_of(doc: dict[str, Any]) -> str | None:
    for target in doc.get("targets") or ():
        if isinstance(target, dict) and target.get("type") == "audit_event":
            return str(target.get("id"))
    return None


async def _authentic_control(
    control_id: object,
    action: str,
    after_seq: int,
    lookup: ControlLookup,
    keys: Mapping[str, Ed25519PublicKey],
) -> tuple[dict[str, Any] | None, str]:
    """The stored control event ``control_id`` if it is an authentic ``action``, else why not."""
    if not isinstance(control_id, str):
        return None, "it names no control event"
    control = await lookup(control_id)
    if control is None:
        return None, f"no control event {control_id!r} in the chain"
    if control.get("action") != action or control.get("erased"):
        return None, f"event {control_id!r} is not a {action.rsplit('.', 1)[-1]} control event"
    if not isinstance(control.get("seq"), int) or control["seq"] <= after_seq:
        return None, f"control event {control_id!r} is not later in the chain"
    try:
        if document_content_hash(control) != control.get("content_hash"):
            return None, f"control event {control_id!r} was edited"
    except ValueError as exc:
        return None, f"control event {control_id!r}: {exc}"
    problem = control_problem(event_fields(control), keys)
    if problem is not None:
        return None, f"control event {control_id!r}: {problem}"
    return control, ""


async def _control_defect(
    doc: dict[str, Any], lookup: ControlLookup | None, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[str, str] | None:
    """(reason, detail) when ``doc``'s control fields are not backed by authentic events.

    - a stored event in the reserved namespace must carry a valid proof;
    - an erased event must name an authentic erasure, later in the chain, that
      targets it (an erased correction: that targets what the correction did);
    - every correction record must name an authentic correction of this event
      that sets exactly what the record says.
    """
    seq, own_id = int(doc["seq"]), event_id_of(doc)
    erased = doc.get("erased")
    if not erased and is_reserved(doc.get("action")):
        problem = control_problem(event_fields(doc), keys)
        if problem is not None:
            return "forged_control", f"control event {own_id!r}: {problem}"
    if lookup is None:
        return None
    if erased:
        record = erased if isinstance(erased, dict) else {}
        control, why = await _authentic_control(
            record.get("event_id"), ERASED_ACTION, seq, lookup, keys
        )
        if control is None:
            return "bad_erasure", f"event {own_id!r} is erased but {why}"
        target = _control_target_of(control)
        # an erased correction keeps its targets: the event whose erasure took it along
        subject = _control_target_of(doc) if doc.get("action") == CORRECTED_ACTION else own_id
        if target is None or target != subject:
            return "bad_erasure", (
                f"event {own_id!r} is erased by {record.get('event_id')!r}, which erases {target!r}"
            )
    for record in doc.get("corrections") or ():
        record = record if isinstance(record, dict) else {}
        control, why = await _authentic_control(
            record.get("event_id"), CORRECTED_ACTION, seq, lookup, keys
        )
        if control is None:
            return "bad_correction", f"a correction of {own_id!r}: {why}"
        wanted = (control.get("metadata") or {}).get("set")
        if _control_target_of(control) != own_id or wanted != record.get("set"):
            return "bad_correction", (
                f"the correction record {record.get('event_id')!r} of {own_id!r}"
                " differs from the correction event it names"
            )
    return None


async def verify_chain(
    tenant: str,
    docs: AsyncIterator[dict[str, Any]],
    checkpoints: Iterable[dict[str, Any]],
    public_key: TrustedKeys,
    *,
    start_seq: int = 1,
    prev_hash: str = GENESIS,
    to_end: bool = True,
    on_progress: Callable[[int], None] | None = None,
    control_keys: Mapping[str, Ed25519PublicKey] | None = None,
    controls: ControlLookup | None = None,
) -> Report:
    """Walk ``docs`` (one tenant, sorted by ``(seq, _id)``) in constant memory.

    Recomputes every content hash (erased documents: the stored one is
    trusted), checks every link (which covers ``received_at``) and every
    checkpoint signature, that the store agrees with each signed checkpoint and
    — when ``to_end`` — that it reaches the latest one. With ``control_keys``
    it also checks every control event's proof and, with ``controls`` (looks a
    stored event of this tenant up by id), that every erasure and correction
    record is backed by an authentic control event. Stops at the first defect,
    naming its seq, the event's id and the reason. ``start_seq``/``prev_hash``
    verify a slice that starts mid-chain.
    """
    report = Report(tenant)
    cps = _check_checkpoints(report, tenant, checkpoints, public_key)
    if cps is None:
        return report
    expected, prev = start_seq, prev_hash
    last_signed = start_seq - 1  # the highest seq a checkpoint confirmed so far
    it = aiter(docs)
    cur = await anext(it, None)
    while cur is not None:
        nxt = await anext(it, None)
        seq, cid = cur.get("seq"), event_id_of(cur)
        if not isinstance(seq, int):
            return report.fail(expected, "edited", f"event {cid!r} has no seq", cid)
        if seq < expected:
            return report.fail(seq, "inserted", f"a second event ({cid!r}) claims seq", cid)
        if seq > expected:
            gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            return report.fail(expected, "deleted", f"seq {gap} missing")
        if nxt is not None and nxt.get("seq") == seq:
            other = event_id_of(nxt)
            return report.fail(seq, "inserted", f"events {cid!r} and {other!r}", other)
        content, why = _content_of(cur)
        if content is None:
            return report.fail(seq, "edited", why, cid)
        if content != cur.get("content_hash"):
            return report.fail(seq, "edited", "content differs from its content_hash", cid)
        if not links(prev, content, cur):
            if nxt is not None and _links_from(prev, nxt):
                detail = f"seq {seq + 1} chains from seq {seq - 1}"
                return report.fail(seq, "reordered", detail, cid)
            detail = f"hash does not chain from seq {seq - 1} (or received_at was changed)"
            return report.fail(seq, "edited", detail, cid)
        signed = cps.by_seq.get(seq)
        if signed is not None and signed != cur["hash"]:
            detail = (
                f"chain differs from the signed checkpoint {seq}: an event in seq"
                f" {last_signed + 1}..{seq} was changed and the rest re-hashed"
            )
            return report.fail(seq, "rewritten", detail, cid)
        if signed is not None:
            last_signed = seq
        if control_keys is not None:
            defect = await _control_defect(cur, controls, control_keys)
            if defect is not None:
                return report.fail(seq, defect[0], defect[1], cid)
        report.erased += bool(cur.get("erased"))
        report.corrected += bool(cur.get("corrections"))
        prev, expected = cur["hash"], seq + 1
        report.checked += 1
        report.head_seq, report.head_hash = seq, prev
        if on_progress is not None and report.checked % 1000 == 0:
            on_progress(report.checked)
        cur = nxt
    if on_progress is not None:
        on_progress(report.checked)
    last = expected - 1
    if to_end and cps.latest > last:
        return report.fail(
            last + 1, "truncated", f"store ends at seq {last}; a checkpoint signs seq {cps.latest}"
        )
    report.unsigned_tail = max(0, last - cps.latest) if to_end else 0
    return report


def _links_from(prev: str, doc: dict[str, Any]) -> bool:
    content, _ = _content_of(doc)
    return content is not None and content == doc.get("content_hash") and links(prev, content, doc)


Probe = Callable[[int], Awaitable[dict[str, Any] | None]]


def seq_probes(events: Any, tenant: str, projection: dict[str, int]) -> tuple[Probe, Probe]:
    """``(first_from, exact)`` probes of ``tenant``'s chain in the collection ``events``.

    For :func:`find_head` and :func:`first_seq_where`; both are index lookups on
    the unique ``(tenant, seq)`` index, returning only ``projection``'s fields.
    """

    async def first_from(k: int) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await events.find_one(
            {"tenant": tenant, "seq": {"$gte": k}}, projection=projection, sort=[("seq", 1)]
        )
        return doc

    async def exact(k: int) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await events.find_one(
            {"tenant": tenant, "seq": k}, projection=projection
        )
        return doc

    return first_from, exact


async def find_head(first_from: Probe, exact: Probe | None = None) -> dict[str, Any] | None:
    """The stored event with the highest seq, by galloping and bisecting.

    ``first_from(k)`` returns the event with the smallest seq ``>= k`` (an
    ascending index probe; SecantusDB does not walk indexes backwards, so
    ``sort(seq, -1)`` would scan). O(log n) probes.

    ``exact(k)``, if given, returns the event with seq ``k``: a point lookup, cheap
    on every server, where ``first_from(k)`` for a small ``k`` makes SecantusDB
    fetch and sort every later event (30 s for a 20,000-event tenant). An intact
    chain has no gaps, so galloping on point lookups finds the head; one
    ``first_from`` past it confirms nothing lies beyond. A damaged chain (a gap)
    falls through to range probes from the first event past the gap.
    """
    if exact is not None and (start := await exact(1)) is not None:
        lo = await _gallop(exact, start)
        beyond = await first_from(int(lo["seq"]) + 1)
        if beyond is None:
            return lo
        start = beyond  # a gap: go on with range probes from there
    elif (start := await first_from(1)) is None:
        return None
    return await _gallop(first_from, start)


async def _gallop(probe: Probe, lo: dict[str, Any]) -> dict[str, Any]:
    """From the stored ``lo``, the highest event ``probe`` reaches: gallop, then bisect."""
    step = 1
    while (nxt := await probe(int(lo["seq"]) + step)) is not None:
        lo, step = nxt, step * 2
    hi = int(lo["seq"]) + step  # nothing at or after hi
    while int(lo["seq"]) + 1 < hi:
        mid = (int(lo["seq"]) + 1 + hi) // 2
        found = await probe(mid)
        if found is None:
            hi = mid
        else:
            lo = found
    return lo


async def first_seq_where(
    probe: Probe, head_seq: int, pred: Callable[[dict[str, Any]], bool]
) -> int:
    """Smallest seq in ``1..head_seq`` whose event satisfies the monotone ``pred``.

    Returns ``head_seq + 1`` when none does. Used to map ``--since/--until``
    times to seqs (``received_at`` grows with seq within a partition).
    """
    lo, hi = 1, head_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        doc = await probe(mid)
        if doc is not None and pred(doc):
            hi = mid
        else:
            lo = mid + 1
    return lo


def public_key_of(settings: AuditSettings) -> str | None:
    """The configured public key, or the one derived from the signing key."""
    if settings.checkpoint_public_key:
        return settings.checkpoint_public_key
    if settings.checkpoint_signing_key is not None:
        return public_key_b64(load_private_key(settings.checkpoint_signing_key.get_secret_value()))
    return None


def retired_public_keys(settings: AuditSettings) -> list[str]:
    """``AUDITSTREAM_CHECKPOINT_RETIRED_PUBLIC_KEYS`` as a list of base64 keys."""
    return [k for k in settings.checkpoint_retired_public_keys.split(",") if k]


def checkpoint_keys(settings: AuditSettings) -> dict[str, Ed25519PublicKey]:
    """Every public key checkpoints may be signed with, by key id: the current one
    (:func:`public_key_of`) and the retired ones. Empty when none is configured."""
    current = public_key_of(settings)
    publics = [*([current] if current else []), *retired_public_keys(settings)]
    out: dict[str, Ed25519PublicKey] = {}
    for public in publics:
        try:
            out[key_id(public)] = load_public_key(public)
        except ValueError as exc:
            raise SettingsError(
                f"invalid setting AUDITSTREAM_CHECKPOINT_PUBLIC_KEY: {exc}"
            ) from None
    return out


async def aiter_list(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Adapt a plain iterable (an NDJSON file, a test list) to :func:`verify_chain`."""
    for item in items:
        yield item
