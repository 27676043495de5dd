"""The framework-free record and batch types the pipeline works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka message, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Batch:
    """Records flushed together; carries the offsets it may commit once stored."""

    records: list[Record]
    documents: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[tuple[Record, str]] = field(default_factory=list)
    dead_lettered: int = 0

    def committable(self) -> dict[tuple[str, int], int]:
        """``{(topic, partition): next_offset}`` covering every record of the batch."""
        out: dict[tuple[str, int], int] = {}
        for r in self.records:
            tp = (r.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out
