"""The archived records of a topic, in order, for replay.

Per partition, entries come in manifest order, which is (epoch, offset) order:
each epoch is a separate history (a restarted broker's offsets start again at 0),
all of whose records are real events. Each segment's SHA-256 is checked
against its entry as it is read, and the manifest's hash chain when it is
loaded: a replay never feeds an altered archive into the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stream_processor.archive.manifest import Entry, Manifest, PartitionState, line_hash
from stream_processor.archive.segment import iter_records, sha256
from stream_processor.archive.storage import ArchiveStorage, as_storage
from stream_processor.records import Record


class ArchiveError(RuntimeError):
    """The archive does not match its manifest (run ``auditstream archive verify``)."""


class ArchiveReader:
    def __init__(self, root: str | Path | ArchiveStorage) -> None:
        """``root``: an archive directory or a storage (:func:`.storage.archive_storage`)."""
        self.storage = as_storage(root)
        try:
            self.manifest = Manifest.load(self.storage)
        except ValueError as exc:
            raise ArchiveError(f"{exc} (auditstream archive verify)") from None
        prev = "0" * 64
        for i, (entry, line) in enumerate(
            zip(self.manifest.entries, self.manifest.lines, strict=True)
        ):
            if entry.prev != prev or entry.n != i:
                raise ArchiveError(
                    f"manifest line {i + 1} breaks the hash chain (auditstream archive verify)"
                )
            prev = line_hash(line)

    def exists(self) -> bool:
        return bool(self.manifest.entries)

    def partitions(self, topic: str) -> list[int]:
        return sorted({e.partition for e in self.manifest.entries if e.topic == topic})

    def entries(self, topic: str, partition: int) -> list[Entry]:
        return [e for e in self.manifest.entries if (e.topic, e.partition) == (topic, partition)]

    def state(self, topic: str, partition: int) -> PartitionState | None:
        return self.manifest.state().get((topic, partition))

    def records(self, entries: list[Entry]) -> Iterator[Record]:
        for e in entries:
            try:
                data = self.storage.read_segment(e.path)
            except FileNotFoundError:
                raise ArchiveError(f"segment {e.path} is missing") from None
            if sha256(data) != e.sha256:
                raise ArchiveError(f"segment {e.path} does not match its SHA-256")
            for rec in iter_records(data, e.topic, e.partition):
                yield rec.record
