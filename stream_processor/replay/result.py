"""What a replay did (:class:`ReplayResult`), and a digest to compare two stores."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import Report
from audit_events.codec import canonical_json

STATE_ID = "replay"  # the replay's own document in ``replay_state`` (the fence has another)


@dataclass
class ReplayResult:
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0  # the whole run: rebuild, swap and the verification after it
    rebuild_seconds: float = 0.0  # topic → decode → chain → write, up to the swap's fence
    fenced_seconds: float = 0.0  # how long live writers were paused (fence up → lifted)
    fence_phases: dict[str, float] = field(default_factory=dict)  # seconds per phase under it
    resumed: bool = False
    swapped: bool = False
    archived_records: int = 0  # of ``records``, read from the archive (the rest from the topic)
    archive_epochs: int = 0  # distinct (partition, epoch) histories read from the archive
    live_count: int | None = None
    replay_count: int | None = None
    # the rebuilt chains, verified before the swap
    reports: list[Report] = field(default_factory=list)
    refusal: str | None = None  # one line: why the rebuilt store was not swapped in

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        # The rebuilt store holds at least what the live one held (more when the live
        # processor lagged behind the topic, or the live store was lost).
        counts = self.live_count is None or (self.replay_count or 0) >= self.live_count
        return self.refusal is None and counts and all(r.ok for r in self.reports)


async def store_digest(collection: AsyncCollection[dict[str, Any]]) -> tuple[int, str]:
    """(count, SHA-256 of every document's canonical JSON, sorted by id)."""
    digest = hashlib.sha256()
    count = 0
    async for doc in collection.find({}).sort([("_id", 1)]).batch_size(1000):
        digest.update(canonical_json(doc) + b"\n")
        count += 1
    return count, digest.hexdigest()
