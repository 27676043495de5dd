"""Step 9: one bump for the batch's documents and the targets its control events changed."""

from __future__ import annotations

from typing import Any

import pytest

from stream_processor.invalidate import Invalidate
from stream_processor.metrics import ProcessorMetrics
from stream_processor.records import Batch, Record

pytestmark = pytest.mark.unit


class Invalidator:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []

    async def bump(
        self, documents: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
    ) -> None:
        if self.fail:
            raise ConnectionError("redis down")
        self.calls.append([d["id"] for d in documents])


def batch() -> Batch:
    records = [Record("t", 0, i, 0, None, b"") for i in range(2)]
    docs = [{"id": "e1", "tenant": "acme"}, {"id": "fix", "tenant": "acme"}]
    b = Batch(records, accepted=list(zip(records, docs, strict=True)))
    b.changed.append({"id": "target", "tenant": "acme"})  # what Step 6 changed
    return b


async def test_the_batch_and_the_changed_targets_are_bumped_in_one_call() -> None:
    invalidator = Invalidator()
    await Invalidate(invalidator)(batch())
    assert invalidator.calls == [["e1", "fix", "target"]]


async def test_a_failed_bump_is_counted_and_never_raises() -> None:
    metrics = ProcessorMetrics()
    await Invalidate(Invalidator(fail=True), metrics)(batch())
    failures = metrics.registry.get_sample_value("auditstream_invalidation_failures_total")
    assert failures == 1
