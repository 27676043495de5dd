"""The offline verifier checks an exported slice with the public key only."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_events import chain
from audit_events.codec import corrected_view, document_to_api, event_to_document
from audit_events.schema import AuditEvent
from producers.verify_offline import main, verify_slice
from query_api.export import tombstone
from tests.unit.audit_events.test_chain import KEY_PUBLIC, T0, build, checkpoint

pytestmark = pytest.mark.unit


def erasure_event(target_id: str, seq: int, prev: str) -> dict[str, Any]:
    """The control event that erased ``target_id``, sealed at ``seq``."""
    event = AuditEvent(
        id="x1",
        tenant="acme",
        action=chain.ERASED_ACTION,
        occurred_at=T0 + timedelta(hours=1),
        actor={"id": "admin"},
        targets=[{"type": "audit_event", "id": target_id}],
        description="gdpr",
    )
    doc = event_to_document(event, T0)
    chain.seal(doc, seq, prev)
    return doc


def exported() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = build(12)
    docs.append(erasure_event("e0005", 13, docs[11]["hash"]))
    # a correction, recorded the way the processor applies it
    changes = {"description": "fixed", "actor": {"id": "bob", "type": "user"}}
    view = corrected_view(docs[3])
    docs[3]["corrections"] = [
        {
            "event_id": "c1",
            "by": "admin",
            "at": T0,
            "reason": "typo",
            "set": changes,
            "previous": {k: view.get(k) for k in changes},
        },
    ]
    # an erasure (tombstone)
    for name in chain.ERASED_FIELDS:
        docs[5].pop(name, None)
    docs[5]["erased"] = {"event_id": "x1", "by": "admin", "at": T0, "reason": "gdpr"}
    views = [document_to_api(d) for d in docs]
    views[5] = tombstone(views[5])  # as GET /v1/events/export?include_erased=true has it
    return views, [checkpoint(docs[7]), checkpoint(docs[12])]


async def test_exported_view_with_corrections_and_tombstones_verifies() -> None:
    events, cps = exported()
    assert events[3]["description"] == "fixed"  # the corrected view
    [report] = await verify_slice(events, cps, KEY_PUBLIC, complete=True)
    assert (report.ok, report.checked, report.erased, report.corrected) == (True, 13, 1, 1)
    assert set(events[5]) == {
        *("id", "tenant", "seq", "action", "received_at", "content_hash", "hash", "erased")
    }


async def test_an_export_without_tombstones_reports_the_gap_and_why() -> None:
    events, cps = exported()
    [report] = await verify_slice(events[:5] + events[6:], cps, KEY_PUBLIC, complete=True)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 6, "deleted")
    assert report.detail is not None and "include_erased=true" in report.detail


async def test_an_event_turned_into_a_tombstone_is_detected() -> None:
    events, cps = exported()
    # hide event 9's content: drop its payload and claim the erasure x1 (which erased e0005)
    events[8] = tombstone({**events[8], "erased": events[5]["erased"]})
    [report] = await verify_slice(events, cps, KEY_PUBLIC, complete=True)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 9, "edited")
    assert "not backed by erasure event x1" in str(report.detail)
    # naming an erasure event that is not in a complete export is caught too
    events, cps = exported()
    events[8] = tombstone({**events[8], "erased": {**events[5]["erased"], "event_id": "zz"}})
    [report] = await verify_slice(events, cps, KEY_PUBLIC, complete=True)
    assert (report.ok, report.first_bad_seq) == (False, 9)
    assert "erasure event zz is not in the export" in str(report.detail)


async def test_slice_from_the_middle_is_anchored_on_its_first_event() -> None:
    events, cps = exported()
    [report] = await verify_slice(events[4:10], cps, KEY_PUBLIC)
    assert report.ok and report.checked == 5 and report.checkpoints == 2


async def test_tampered_slice_fails() -> None:
    events, cps = exported()
    events[8]["outcome"] = "failure"
    [report] = await verify_slice(events, cps, KEY_PUBLIC)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, 9, "edited")


def test_cli_exit_status(tmp_path: Path) -> None:
    events, cps = exported()
    (tmp_path / "e.ndjson").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    (tmp_path / "c.json").write_bytes(orjson.dumps({"data": cps}))
    args = ["--events", str(tmp_path / "e.ndjson"), "--checkpoints", str(tmp_path / "c.json")]
    assert main([*args, "--public-key", KEY_PUBLIC, "--complete"]) == 0
    events[2]["hash"] = "0" * 64
    (tmp_path / "e.ndjson").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    assert main([*args, "--public-key", KEY_PUBLIC]) == 1


def test_keys_from_the_public_key_endpoint_include_retired_ones(tmp_path: Path) -> None:
    """Checkpoints signed before a key rotation verify with the endpoint's JSON."""
    events, cps = exported()
    old_private, old_public = chain.generate_keypair()
    cps[0] = chain.sign_checkpoint(
        chain.load_private_key(old_private), "acme", cps[0]["seq"], cps[0]["hash"], T0
    )
    (tmp_path / "e.ndjson").write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    (tmp_path / "c.json").write_bytes(orjson.dumps({"data": cps}))
    body = {"public_key": KEY_PUBLIC, "retired": [{"public_key": old_public, "key_id": "x"}]}
    (tmp_path / "key.json").write_bytes(orjson.dumps(body))
    args = ["--events", str(tmp_path / "e.ndjson"), "--checkpoints", str(tmp_path / "c.json")]
    assert main([*args, "--public-key", str(tmp_path / "key.json"), "--complete"]) == 0
    assert main([*args, "--public-key", KEY_PUBLIC, "--public-key", old_public]) == 0
    assert main([*args, "--public-key", KEY_PUBLIC]) == 1  # the retired key is missing
