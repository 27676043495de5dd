"""Step 6: the batch's stored control events are applied; conflicts are not."""

from __future__ import annotations

from typing import Any

import pytest

from audit_events.chain import CORRECTED_ACTION, ERASED_ACTION
from stream_processor.control import ApplyControls
from stream_processor.records import Batch, Record, WriteResult

pytestmark = pytest.mark.unit


def control(event_id: str, action: str = CORRECTED_ACTION, target: str = "a") -> dict[str, Any]:
    return {
        "id": event_id,
        "tenant": "acme",
        "action": action,
        "targets": [{"type": "audit_event", "id": target}],
    }


class Applier:
    """Changes each target once (idempotent, like ControlApplier); can fail once."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.applied: list[str] = []
        self.changed: set[str] = set()
        self.fail_on = fail_on

    async def apply(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        if doc["id"] == self.fail_on:
            self.fail_on = None
            raise ConnectionError("store down")
        self.applied.append(doc["id"])
        target = doc["targets"][0]["id"]
        if target in self.changed:
            return None
        self.changed.add(target)
        return {"id": target, "tenant": "acme"}


def batch(docs: list[dict[str, Any]], conflicts: tuple[int, ...] = ()) -> Batch:
    records = [Record("t", 0, i, 0, None, b"") for i in range(len(docs))]
    b = Batch(records, accepted=list(zip(records, docs, strict=True)))
    b.written = WriteResult(len(docs) - len(conflicts), 0, conflicts)
    return b


async def test_only_stored_control_events_are_applied_and_their_targets_collected() -> None:
    applier = Applier()
    plain = {"id": "p", "tenant": "acme", "action": "invoice.update", "targets": []}
    b = batch([plain, control("c1"), control("c2", ERASED_ACTION, "b"), control("c3")], (2,))
    await ApplyControls(applier)(b)  # type: ignore[arg-type]
    assert applier.applied == ["c1", "c3"]  # not the plain event, not the conflict c2
    assert b.changed == [{"id": "a", "tenant": "acme"}]  # c3 changed nothing more


async def test_a_retry_keeps_the_targets_an_earlier_attempt_changed() -> None:
    applier = Applier(fail_on="c2")
    b = batch([control("c1"), control("c2", target="b")])
    step = ApplyControls(applier)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await step(b)
    await step(b)  # the pipeline's retry: c1 is a no-op now, its target still needs its bump
    assert [t["id"] for t in b.changed] == ["a", "b"]
