"""An erased event keeps the index tokens of what erasure keeps (issue 18's search
tokens): lists with ``include_erased`` still find the tombstone through
``tenant_search_time``; no ``q`` word stays."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from audit_events.chain import CORRECTED_ACTION, ERASED_FIELDS
from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from stream_processor.control import _erase_update

pytestmark = pytest.mark.unit

RECORD = {"event_id": "ctl-1", "by": "admin", "at": datetime(2026, 1, 1, tzinfo=UTC)}


def test_an_erased_event_keeps_the_tokens_of_its_action() -> None:
    event = AuditEvent(
        id="e1",
        tenant="acme",
        action="invoice.update",
        actor={"id": "alice"},
        targets=[{"type": "invoice", "id": "9", "name": "Invoice Nine"}],
        description="secret words",
    )
    doc = event_to_document(event, datetime(2026, 1, 1, tzinfo=UTC))
    update = _erase_update(RECORD, doc)
    assert update["$set"] == {"erased": RECORD, "search": ["*", "c:invoice.update"]}
    assert set(update["$unset"]) == {*ERASED_FIELDS, "corrections"} - {"search"}


def test_an_erased_correction_keeps_its_target_token() -> None:
    correction = {
        "action": CORRECTED_ACTION,
        "targets": [{"type": "audit_event", "id": "e1"}],
        "metadata": {"set": {"description": "secret"}},
    }
    update = _erase_update(RECORD, correction, keep=("targets",))
    assert update["$set"]["search"] == ["*", "c:" + CORRECTED_ACTION, "t:e1"]
    assert "targets" not in update["$unset"] and "search" not in update["$unset"]
