"""The verifier: walk one tenant's stored chain and name its first defect.

No database client here: the verifier walks any async iterator of stored
documents sorted by ``(seq, _id)`` (:func:`aiter_list` adapts a plain list).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit_events.chain.checkpoints import TrustedKeys, checkpoint_problem, key_ring
from audit_events.chain.control import (
    CORRECTED_ACTION,
    ERASED_ACTION,
    control_problem,
    is_reserved,
)
from audit_events.chain.hashing import GENESIS, document_content_hash, event_fields, links

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
    # issue 16: the purge marker the walk started after (audit_events/retention.py)
    purged: dict[str, Any] | None = None

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
    for cp in checkpoints:  # from a topic any producer may write: anything at all
        if not isinstance(cp, dict) or cp.get("tenant") != tenant:
            continue
        try:
            seq = int(cp.get("seq", 0))
        except (TypeError, ValueError, OverflowError):
            detail = f"checkpoint with seq {str(cp.get('seq'))[:40]!r}: not a number"
            report.fail(0, "bad_checkpoint", detail)
            return None
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


async def _late_correction_erasure(
    doc: dict[str, Any],
    record: dict[str, Any],
    lookup: ControlLookup,
    keys: Mapping[str, Ed25519PublicKey],
    why: str,
) -> tuple[dict[str, Any] | None, str]:
    """An erased correction may name an erasure *earlier* in the chain: a correction
    the API accepted before the erasure of its event was applied, which then came
    after it in the log, is erased with that erasure's record (it carries the
    event's payload). Only when the corrected event itself names that erasure."""
    control, late_why = await _authentic_control(
        record.get("event_id"), ERASED_ACTION, 0, lookup, keys
    )
    if control is None:
        return None, late_why
    corrected_id = _control_target_of(doc)
    corrected = await lookup(corrected_id) if corrected_id is not None else None
    named = (corrected or {}).get("erased")
    if not isinstance(named, dict) or named.get("event_id") != record.get("event_id"):
        return None, why
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
        if control is None and doc.get("action") == CORRECTED_ACTION:
            control, why = await _late_correction_erasure(doc, record, lookup, keys, why)
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


async def aiter_list(items: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Adapt a plain iterable (an NDJSON file, a test list) to :func:`verify_chain`."""
    for item in items:
        yield item
