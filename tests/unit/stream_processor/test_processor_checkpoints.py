"""Step 7 as the pipeline runs it (``CheckpointHeads``), against a fake checkpointer.

The checkpoint policy itself (``Checkpointer.due``, ``after_batch``, ``idle``,
``seed``) is tested in tests/unit/stream_processor/test_control.py with a fixed clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from stream_processor.checkpoints import CheckpointHeads
from stream_processor.records import Batch, WriteResult

pytestmark = pytest.mark.unit


class Checkpointer:
    def __init__(self) -> None:
        self.batches: list[dict[str, tuple[int, str]]] = []
        self.seeded: list[dict[str, tuple[int, str]]] = []
        self.idles = 0

    async def after_batch(self, heads: dict[str, tuple[int, str]]) -> int:
        self.batches.append(heads)
        return len(heads)

    async def seed(self, heads: dict[str, tuple[int, str]]) -> int:
        self.seeded.append(heads)
        return len(heads)

    async def idle(self) -> int:
        self.idles += 1
        return 0


class _NoMarkers:
    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None


class Events:
    """``distinct`` and the ascending seq probes ``derive_head`` makes on the dev server."""

    def __init__(self, heads: dict[str, int]) -> None:
        self.heads = heads
        self.database = self.client = self.admin = self  # buildInfo: the dev server

    async def command(self, name: str) -> dict[str, Any]:
        return {"secantusVersion": "fake"}

    async def distinct(self, field: str) -> list[str]:
        return list(self.heads)

    def __getitem__(self, name: str) -> Any:  # database["retention_purges"]: no marker
        assert name == "retention_purges", name
        return _NoMarkers()

    async def find_one(self, query: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        """Seqs 1..head are stored: the first at or after ``$gte``, or exactly ``seq``."""
        seq = query["seq"]
        k = seq["$gte"] if isinstance(seq, dict) else seq
        if not 1 <= k <= self.heads[query["tenant"]]:
            return None
        return {"seq": k, "hash": f"{k:064x}"}


async def test_the_heads_the_write_left_are_handed_to_the_checkpointer() -> None:
    cp = Checkpointer()
    step = CheckpointHeads(cp, Events({}))  # type: ignore[arg-type]
    batch = Batch([])
    await step(batch)  # nothing written: nothing to sign
    batch.written = WriteResult(2, 0, (), {"acme": (7, "h")})
    await step(batch)
    assert cp.batches == [{"acme": (7, "h")}]


async def test_the_first_idle_tick_adopts_the_stored_heads_then_only_ticks() -> None:
    cp = Checkpointer()
    step = CheckpointHeads(cp, Events({"acme": 3, "globex": 1}))  # type: ignore[arg-type]
    await step.idle()
    await step.idle()
    assert cp.seeded == [{"acme": (3, f"{3:064x}"), "globex": (1, f"{1:064x}")}]
    assert cp.idles == 2
