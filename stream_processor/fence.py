"""Step 4: the swap fence — live writes wait while ``auditstream replay`` swaps collections.

The replay raises the fence (``replay_state/fence``: ``until`` a deadline and a
``generation``) before its last catch-up and lifts it after the rename
(stream_processor/replay/swap.py). Before every write attempt the pipeline asks
the fence: while it is up, :class:`SwapInProgress` makes the pipeline back off
and retry the write (the retry policy's deadline is far longer than the
replay's fence). A new generation means the collection may have been swapped:
the chain heads the writer cached are then forgotten (``on_swap``), so the
next write derives them from the new collection.

A replay that dies with the fence up stalls live writers only until the
fence's deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from stream_processor.records import Batch

FENCE_ID = "fence"


class SwapInProgress(Exception):
    """``auditstream replay`` is swapping collections; the batch is retried later."""


class SwapFence:
    """Checks the fence in ``state`` (the ``replay_state`` collection) before a write."""

    def __init__(
        self,
        state: AsyncCollection[dict[str, Any]],
        on_swap: Callable[[], None],
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._state = state
        self._on_swap = on_swap
        self._now = now
        self._generation: object = None

    async def __call__(self, batch: Batch) -> None:
        """Return when ``batch`` may be written; raise :class:`SwapInProgress` while fenced.

        A batch without documents writes nothing and is never held.
        """
        if not batch.accepted:
            return
        fence = await self._state.find_one({"_id": FENCE_ID})
        generation = fence.get("generation") if fence else None
        if generation != self._generation:
            self._on_swap()  # the collection may have been swapped
            self._generation = generation
        until = fence.get("until") if fence else None
        if isinstance(until, datetime):
            if until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            if until > self._now():
                raise SwapInProgress("replay is swapping collections; retrying")
