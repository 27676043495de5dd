"""The framework-free record and batch types the pipeline works on."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from audit_events.kafka_records import UNREADABLE_BATCH as UNREADABLE_BATCH
from audit_events.kafka_records import UNREADABLE_BATCH_HEADER as UNREADABLE_BATCH_HEADER
from audit_events.kafka_records import _TolerantMemoryRecords as _TolerantMemoryRecords
from audit_events.kafka_records import (
    tolerate_undecodable_header_names as tolerate_undecodable_header_names,
)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka message, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # -1 (or anything) when the broker gave none: decode rejects it
    key: bytes | None
    value: bytes | None  # None: a tombstone (null value), dead-lettered by decode
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What Step 5 (seal + ordered insert) did with a batch's documents."""

    inserted: int
    duplicates: int
    # Positions (in the list given to the writer) of the documents not stored
    # because their tenant already holds an event with that id and another content.
    conflicts: tuple[int, ...] = ()
    # The chain head (seq, hash) of every tenant the documents belong to, after the write.
    heads: Mapping[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Records flushed together, and what each step found out about them.

    Carries the offsets it may commit once stored (:meth:`committable`). The
    steps (docs/processor.md, "Steps") fill it in order: decode (Step 2) pairs
    every stored-to-be document with the record it came from (``accepted``) or
    gives the record a reason (``rejects``); the write (Step 5) sets ``written``
    and adds its conflicts to ``rejects``; applying control events (Step 6)
    collects the targets they changed (``changed``), whose scopes the
    invalidation (Step 9) bumps with the batch's own.
    """

    records: list[Record]
    accepted: list[tuple[Record, dict[str, Any]]] = field(default_factory=list)
    rejects: list[tuple[Record, str]] = field(default_factory=list)
    dead_lettered: int = 0  # of ``rejects``, how many the DLQ acknowledged (Steps 3 and 8)
    written: WriteResult | None = None
    changed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """The decoded documents, in record order (conflicts included)."""
        return [doc for _, doc in self.accepted]

    def stored_documents(self) -> list[dict[str, Any]]:
        """The decoded documents that are stored now (all but the write's conflicts)."""
        conflicts = set(self.written.conflicts) if self.written is not None else set()
        return [doc for i, (_, doc) in enumerate(self.accepted) if i not in conflicts]

    def committable(self) -> dict[tuple[str, int], int]:
        """``{(topic, partition): next_offset}`` covering every record of the batch."""
        out: dict[tuple[str, int], int] = {}
        for r in self.records:
            tp = (r.topic, r.partition)
            out[tp] = max(out.get(tp, 0), r.offset + 1)
        return out


def record_from_message(msg: Any) -> Record:
    """A :class:`Record` from a consumer's message (Faust/aiokafka), whatever it carries.

    Never raises on the payload: a null value or key stays ``None`` (decode
    dead-letters a null value), a missing or absurd timestamp becomes ``-1``
    (decode dead-letters it), headers that are not ``(str, bytes)`` pairs are
    kept as well as they can be. Only the position (topic, partition, offset)
    is taken as given: without it nothing could be committed.
    """
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=timestamp_ms(getattr(msg, "timestamp", None)),
        key=as_bytes(getattr(msg, "key", None)),
        value=as_bytes(getattr(msg, "value", None)),
        headers=as_headers(getattr(msg, "headers", None)),
    )


def timestamp_ms(seconds: Any) -> int:
    """Milliseconds of a timestamp in seconds; ``-1`` when there is none or it is absurd."""
    try:
        value = float(seconds)
    except (TypeError, ValueError, OverflowError):
        return -1
    if not math.isfinite(value) or not -(2**62) < value * 1000 < 2**62:
        return -1  # keeps every later step (the DLQ record's JSON) within 64 bits
    return round(value * 1000)


def as_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "surrogatepass")


def as_headers(headers: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not headers:
        return ()
    try:
        pairs: Iterable[Any] = headers.items() if isinstance(headers, Mapping) else headers
        out = []
        for pair in pairs:
            name, value = pair
            key = name if isinstance(name, str) else repr(name)
            out.append((key, as_bytes(value)))
        return tuple(out)
    except (TypeError, ValueError):
        return (("(unreadable headers)", as_bytes(repr(headers))),)


# The consumers' tolerance of batches aiokafka cannot parse is audit_events.kafka_records
# (the query API reads the checkpoints topic with it too).


def unreadable_batch_reason(record: Record) -> str | None:
    """The reason a record stands for a batch the fetcher could not read, if it does."""
    for name, value in record.headers:
        if name == UNREADABLE_BATCH_HEADER:
            detail = (value or b"").decode("utf-8", "backslashreplace")[:500]
            return f"{UNREADABLE_BATCH} (offsets up to this one): {detail}"
    return None
