"""The manifest: one line per segment, each carrying the hash of the line before it.

``<archive>/manifest.ndjson`` is append-only (in a bucket: the ``manifest/``
parts in key order, see :mod:`.storage`). An entry names its segment
(topic, partition, epoch, the offsets it covers, record count, size, SHA-256)
and ``prev``, the SHA-256 of the previous line's exact bytes (64 zeros for the
first). Deleting, editing or reordering lines breaks the chain; deleting or
altering a segment no longer matches its entry. An entry is appended (and the
file fsync'd) only after its segment file is durable, and offsets are committed
only after that: a crash mid-append leaves a torn last line that no committed
offset relies on, which the archiver cuts off at start.

Coverage: an entry covers the offsets ``[from_offset, next_offset)`` of its
partition's epoch (``first_offset``/``last_offset`` are the records it holds;
Kafka may skip offsets, e.g. transaction markers). Within an epoch, each entry
starts where the previous one ended, so a gap is visible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_processor.archive.storage import MANIFEST, SEGMENTS, ArchiveStorage, as_storage

__all__ = ["GENESIS", "MANIFEST", "SEGMENTS", "Entry", "Manifest", "PartitionState"]
GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(frozen=True)
class Entry:
    n: int
    topic: str
    partition: int
    epoch: int
    from_offset: int
    first_offset: int
    last_offset: int
    count: int
    size: int  # compressed bytes of the segment file
    raw_bytes: int
    sha256: str
    path: str  # relative to the archive root
    first_ts: int
    last_ts: int
    last_record: str  # record_digest of the last record: notices a restarted history
    written_at: str
    prev: str
    epoch_reason: str | None = None  # on an epoch's first segment: why it began

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    def line(self) -> bytes:
        return orjson.dumps(self.__dict__, option=orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> Entry:
        d = orjson.loads(line)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def segment_path(topic: str, partition: int, epoch: int, first: int, last: int) -> str:
    return f"{SEGMENTS}/{topic}/{partition}/e{epoch}/{first:020d}-{last:020d}.ndjson.gz"


@dataclass
class PartitionState:
    """What the archive holds of one (topic, partition): its latest epoch and end."""

    epoch: int
    next_offset: int
    last_record: str
    last: Entry | None = None  # None: a running archiver's buffer, not yet published


@dataclass
class Manifest:
    """The parsed manifest of an archive (directory or bucket: :mod:`.storage`)."""

    root: str | Path | ArchiveStorage
    entries: list[Entry] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    torn: bytes = b""  # an interrupted append's partial last line

    @property
    def storage(self) -> ArchiveStorage:
        return as_storage(self.root)

    @classmethod
    def load(cls, root: str | Path | ArchiveStorage) -> Manifest:
        """Parse every complete line (raises ``ValueError`` on a malformed one)."""
        m = cls(as_storage(root))
        data = m.storage.read_manifest()
        if data is None:
            return m
        lines = data.split(b"\n")
        m.torn = lines.pop()  # b"" when the file ends with a newline
        for i, raw in enumerate(lines):
            try:
                m.entries.append(Entry.parse(raw))
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"manifest line {i + 1} is not an entry: {exc}") from exc
            m.lines.append(raw + b"\n")
        return m

    def head(self) -> str:
        return line_hash(self.lines[-1]) if self.lines else GENESIS

    def state(self) -> dict[tuple[str, int], PartitionState]:
        out: dict[tuple[str, int], PartitionState] = {}
        for e in self.entries:
            out[(e.topic, e.partition)] = PartitionState(e.epoch, e.next_offset, e.last_record, e)
        return out

    def cut_torn_tail(self) -> None:
        """Drop an interrupted append (never acknowledged: no offset was committed for it)."""
        if not self.torn:
            return
        self.storage.cut_manifest(sum(len(line) for line in self.lines))
        self.torn = b""

    def prepare(self, drafts: Iterable[dict[str, Any]]) -> tuple[list[Entry], list[bytes]]:
        """Chain entries built from ``drafts`` (Entry fields but n/prev) after the head."""
        new: list[Entry] = []
        out: list[bytes] = []
        prev = self.head()
        for d in drafts:
            entry = Entry(n=len(self.entries) + len(new), prev=prev, **d)
            line = entry.line()
            prev = line_hash(line)
            new.append(entry)
            out.append(line)
        return new, out

    async def commit(self, new: list[Entry], out: list[bytes]) -> list[Entry]:
        """Durably append what :meth:`prepare` built (retry with the same arguments)."""
        if new:
            await self.storage.append_manifest(new[0].n, b"".join(out))
            self.entries.extend(new)
            self.lines.extend(out)
        return new

    async def append(self, drafts: Iterable[dict[str, Any]]) -> list[Entry]:
        """Chain, append and make durable entries built from ``drafts``."""
        return await self.commit(*self.prepare(drafts))
