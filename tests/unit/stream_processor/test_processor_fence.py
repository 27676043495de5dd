"""Step 4, the swap fence, against a fake ``replay_state`` collection and a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stream_processor.fence import FENCE_ID, SwapFence, SwapInProgress
from stream_processor.records import Batch, Record

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class State:
    def __init__(self) -> None:
        self.fence: dict[str, Any] | None = None
        self.reads = 0

    async def find_one(self, query: dict[str, Any]) -> dict[str, Any] | None:
        assert query == {"_id": FENCE_ID}
        self.reads += 1
        return self.fence


def batch(documents: int = 1) -> Batch:
    records = [Record("t", 0, i, 0, None, b"") for i in range(documents)]
    return Batch(records, accepted=[(r, {"tenant": "acme"}) for r in records])


def fence(state: State, swaps: list[int]) -> SwapFence:
    return SwapFence(state, lambda: swaps.append(1), now=lambda: NOW)  # type: ignore[arg-type]


async def test_no_fence_lets_every_write_through() -> None:
    state, swaps = State(), []
    check = fence(state, swaps)
    await check(batch())
    await check(batch())
    assert state.reads == 2 and swaps == []  # read before every write; nothing swapped


async def test_a_raised_fence_holds_writes_until_its_deadline() -> None:
    state, swaps = State(), []
    check = fence(state, swaps)
    state.fence = {"_id": FENCE_ID, "until": NOW + timedelta(seconds=1), "generation": 1}
    with pytest.raises(SwapInProgress):
        await check(batch())
    state.fence["until"] = NOW  # the deadline has come: a replay that died stalls no longer
    await check(batch())
    state.fence["until"] = None  # lifted
    await check(batch())


async def test_a_naive_deadline_is_utc() -> None:
    state, swaps = State(), []
    later = (NOW + timedelta(minutes=1)).replace(tzinfo=None)
    state.fence = {"_id": FENCE_ID, "until": later, "generation": 1}
    with pytest.raises(SwapInProgress):
        await fence(state, swaps)(batch())


async def test_a_new_generation_forgets_the_cached_heads_once() -> None:
    state, swaps = State(), []
    check = fence(state, swaps)
    state.fence = {"_id": FENCE_ID, "until": None, "generation": 1}
    await check(batch())
    await check(batch())
    assert swaps == [1]  # generation 1 seen once
    state.fence = {"_id": FENCE_ID, "until": None, "generation": 2}  # a swap happened
    await check(batch())
    assert swaps == [1, 1]


async def test_a_batch_without_documents_is_never_held() -> None:
    state, swaps = State(), []
    state.fence = {"_id": FENCE_ID, "until": NOW + timedelta(hours=1), "generation": 1}
    await fence(state, swaps)(batch(documents=0))
    assert state.reads == 0
