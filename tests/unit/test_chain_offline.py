"""The offline verifier checks an exported slice with the public key only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_events import chain
from audit_events.codec import corrected_view, document_to_api
from producers.verify_offline import main, verify_slice
from tests.unit.test_chain import KEY_PUBLIC, T0, build, checkpoint

pytestmark = pytest.mark.unit


def exported() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    docs = build(12)
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
    docs[5]["erased"] = {"event_id": "e1", "by": "admin", "at": T0, "reason": "gdpr"}
    return [document_to_api(d) for d in docs], [checkpoint(docs[7]), checkpoint(docs[11])]


async def test_exported_view_with_corrections_and_tombstones_verifies() -> None:
    events, cps = exported()
    assert events[3]["description"] == "fixed"  # the corrected view
    [report] = await verify_slice(events, cps, KEY_PUBLIC, complete=True)
    assert (report.ok, report.checked, report.erased, report.corrected) == (True, 12, 1, 1)


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
