"""Step 6: apply control events (corrections, erasures) to the events they target.

A control event is an ordinary audit event in the reserved ``auditstream.``
namespace; it is chained like any other and then applied here, after its batch
is stored. Applying is idempotent (keyed by the control event's id), so a
redelivered or replayed control event changes nothing the second time.

- correction: appends ``{event_id, by, at, reason, set, previous}`` to the
  target's ``corrections``; the original fields stay (they are what the chain
  hashes); readers apply the overlay. ``previous`` lets an offline verifier
  undo the overlay of an exported view.
- erasure: unsets the payload fields (and the corrections, which carry payload
  too) and sets ``erased {event_id, by, at, reason}``; ``seq``, ``content_hash``
  and ``hash`` stay, so the chain still verifies. Correction events that
  targeted the erased event are erased with it: they carry its payload. So is a
  correction that comes after the erasure in the log (accepted by the API before
  the erasure was applied): it is not applied, and erased with the same record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import (
    CONTROL_ACTIONS,
    CORRECTABLE_FIELDS,
    CORRECTED_ACTION,
    ERASED_ACTION,
    ERASED_FIELDS,
    control_problem,
    event_fields,
    is_reserved,
)
from audit_events.codec import corrected_view, document_search_terms
from audit_events.storage import event_key
from stream_processor.records import Batch

log = logging.getLogger("auditstream.processor.control")
TARGET_TYPE = "audit_event"
FORGED = "forged control event"
Keys = Mapping[str, Ed25519PublicKey]


class ControlGate:
    """Refuses every event in the reserved namespace that the API did not issue.

    Called on each decoded document (``decode_batch(check=...)``) by the live
    processor and by replay: the reason it returns sends the record to the DLQ
    (replay skips it), so a forged correction or erasure is never stored, let
    alone applied.
    """

    def __init__(self, keys: Keys) -> None:
        self._keys = keys

    def __call__(self, doc: dict[str, Any]) -> str | None:
        if not is_reserved(doc.get("action")):
            return None
        problem = control_problem(event_fields(doc), self._keys)
        return None if problem is None else f"{FORGED}: {problem}"


def control_target(doc: dict[str, Any]) -> str | None:
    """The id of the event a control event acts on, or None if it is not one."""
    if doc.get("action") not in CONTROL_ACTIONS:
        return None
    for target in doc.get("targets") or ():
        if target.get("type") == TARGET_TYPE:
            return str(target["id"])
    return None


def _record(control: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": control["id"],
        "by": (control.get("actor") or {}).get("id"),
        "at": control.get("occurred_at"),
        "reason": control.get("description"),
    }


def _erase_update(
    record: dict[str, Any], doc: dict[str, Any], keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Erase ``doc`` (its ``action`` and the ``keep`` fields are what stays): the
    payload fields go, ``search`` keeps the index tokens of what stays (so lists
    with ``include_erased`` still find the tombstone; no word: ``q`` never does)."""
    unset = {f: "" for f in (*ERASED_FIELDS, "corrections") if f not in keep and f != "search"}
    kept = {"erased": record, "action": doc.get("action"), **{k: doc.get(k) for k in keep}}
    return {"$unset": unset, "$set": {"erased": record, "search": document_search_terms(kept)}}


# A word of CORRECTED_ACTION: in the ``search`` array of every correction that is
# not erased, with or without the index tokens (before ``auditstream reindex-search``).
_CORRECTED_WORD = CORRECTED_ACTION.rsplit(".", 1)[-1]


def corrections_of(tenant: str, event_id: str) -> dict[str, Any]:
    """The filter of the corrections of ``tenant``'s event ``event_id`` not erased yet.

    MongoDB reads the ``tenant_search_time`` range of a word of the correction
    action (the tenant's corrections, not all its events; SecantusDB scans the
    collection for any filter with fields outside one index); the word, not the
    ``t:`` token, so a correction stored before the search tokens is erased too."""
    return {
        "tenant": tenant,
        "search": _CORRECTED_WORD,
        "targets.type": TARGET_TYPE,
        "targets.id": event_id,
        "action": CORRECTED_ACTION,
        "erased": {"$exists": False},
    }


class ControlApplier:
    """Applies authentic control events; ``keys``: the control public keys by key id.

    The gate dead-letters forged control events before they are stored; the
    applier checks the proof again, so nothing unproven is ever applied (an
    event stored before proofs existed, an empty key set: fail closed).
    """

    def __init__(self, collection: AsyncCollection[dict[str, Any]], keys: Keys) -> None:
        self._coll = collection
        self._keys = keys

    async def apply(self, control: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one stored control event; returns the target as it was, if changed."""
        target_id = control_target(control)
        if target_id is None:
            return None
        problem = control_problem(event_fields(control), self._keys)
        if problem is not None:
            log.warning("not applying control event %s: %s", control.get("_id"), problem)
            return None
        tenant = control["tenant"]
        target = await self._coll.find_one({"_id": event_key(tenant, target_id), "tenant": tenant})
        if target is not None and target.get("erased") and control["action"] == CORRECTED_ACTION:
            return await self._erase_late_correction(control, target)
        if target is None or target.get("erased") or target.get("action") in CONTROL_ACTIONS:
            return None  # unknown, already erased, or itself a control event: a no-op
        if control["action"] == CORRECTED_ACTION:
            return await self._correct(control, target)
        if control["action"] == ERASED_ACTION:
            return await self._erase(control, target)
        return None

    async def _erase_late_correction(
        self, control: dict[str, Any], target: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A correction after its event's erasure in the log (the API accepted both
        before either was applied) is not applied, and it carries the event's payload
        (``metadata.set``): it is erased with the event's own erasure record, keeping
        its ``targets`` as the corrections erased with the event do."""
        result = await self._coll.update_one(
            {
                "_id": event_key(control["tenant"], str(control["id"])),
                "tenant": control["tenant"],
                "erased": {"$exists": False},
            },
            _erase_update(dict(target["erased"]), control, keep=("targets",)),
        )
        return control if result.modified_count else None

    async def _correct(
        self, control: dict[str, Any], target: dict[str, Any]
    ) -> dict[str, Any] | None:
        if any(c.get("event_id") == control["id"] for c in target.get("corrections") or ()):
            return None
        wanted = ((control.get("metadata") or {}).get("set")) or {}
        changes = {k: v for k, v in wanted.items() if k in CORRECTABLE_FIELDS}
        if not changes:
            return None
        view = corrected_view(target)
        record = {
            **_record(control),
            "set": changes,
            "previous": {k: view.get(k) for k in changes},
        }
        result = await self._coll.update_one(
            {
                "_id": target["_id"],
                "tenant": target["tenant"],
                "erased": {"$exists": False},
                "corrections.event_id": {"$ne": control["id"]},
            },
            {"$push": {"corrections": record}},
        )
        return target if result.modified_count else None

    async def _erase(
        self, control: dict[str, Any], target: dict[str, Any]
    ) -> dict[str, Any] | None:
        record = _record(control)
        # Corrections of the erased event carry its payload: erase them too
        # (corrections_of: an index range). They keep ``targets`` (the erased
        # event's id), so verify can tell which erasure took them.
        # First, so a crash before the target's own update redoes both.
        await self._coll.update_many(
            corrections_of(target["tenant"], target["id"]),
            _erase_update(
                record,
                {
                    "action": CORRECTED_ACTION,
                    "targets": [{"type": TARGET_TYPE, "id": target["id"]}],
                },
                keep=("targets",),
            ),
        )
        result = await self._coll.update_one(
            {"_id": target["_id"], "tenant": target["tenant"], "erased": {"$exists": False}},
            _erase_update(record, target),
        )
        return target if result.modified_count else None


class ApplyControls:
    """Step 6 as the pipeline runs it: apply the batch's stored control events.

    Runs after the write (Step 5); a control event the write returned as a
    conflict was not stored and is not applied. Redelivered control events are
    applied again: a no-op if they were. Every target that changed is added to
    ``batch.changed`` as it was before, so the invalidation (Step 9) bumps its
    own scopes (its object history) too. A retry after a failure keeps what an
    earlier attempt added: those targets are unchanged by the second attempt
    but their scopes still need the bump.
    """

    def __init__(self, applier: ControlApplier) -> None:
        self._applier = applier

    async def __call__(self, batch: Batch) -> None:
        for doc in batch.stored_documents():
            if control_target(doc) is not None:
                before = await self._applier.apply(doc)
                if before is not None:
                    batch.changed.append(before)
