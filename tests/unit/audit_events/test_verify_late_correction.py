"""verify: a correction erased by an erasure earlier in the chain (it was accepted before
the erasure was applied, and came after it in the log) is trusted only when the
corrected event names that same erasure."""

from __future__ import annotations

from typing import Any

import pytest

from audit_events import chain
from audit_events.codec import event_to_document, event_wire_dict
from audit_events.schema import AuditEvent
from tests.unit.audit_events.test_chain import T0
from tests.unit.stream_processor.test_control import PRIVATE, _chain_with_controls, verify_docs

pytestmark = pytest.mark.unit


def _late_correction(docs: list[dict[str, Any]], target: str) -> dict[str, Any]:
    fields = event_wire_dict(
        AuditEvent.model_validate(
            {
                "id": "late",
                "tenant": "acme",
                "action": chain.CORRECTED_ACTION,
                "targets": [{"type": "audit_event", "id": target}],
                "description": "why",
                "metadata": {"set": {"description": "secret"}},
            }
        )
    )
    key = chain.load_private_key(PRIVATE)
    doc = event_to_document(AuditEvent.model_validate(chain.sign_control(key, fields)), T0)
    chain.seal(doc, len(docs) + 1, docs[-1]["hash"])
    for name in (*chain.ERASED_FIELDS, "corrections"):
        if name != "targets":
            doc.pop(name, None)
    docs.append(doc)
    return doc


async def test_a_correction_after_its_events_erasure_verifies_when_erased_with_it() -> None:
    docs = _chain_with_controls()  # e0001 erased by ctl0 (seq 6)
    late = _late_correction(docs, "e0001")
    late["erased"] = dict(docs[1]["erased"])
    report = await verify_docs(docs)
    assert (report.ok, report.checked, report.erased) == (True, 8, 2), report


async def test_an_earlier_erasure_of_another_event_is_refused() -> None:
    docs = _chain_with_controls()
    late = _late_correction(docs, "e0003")  # e0003 is not erased
    late["erased"] = dict(docs[1]["erased"])  # borrows ctl0, the erasure of e0001
    report = await verify_docs(docs)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 8, "bad_erasure")
    assert "not later in the chain" in (report.detail or "")
