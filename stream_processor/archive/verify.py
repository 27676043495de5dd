"""``auditstream archive verify``: the manifest chain, every segment, every count.

Each problem is named with where it is: a missing segment, an altered one
(a flipped byte changes its SHA-256), reordered, edited or removed manifest
entries (the ``prev`` chain and the entry numbers), a record count or offsets
that differ from the entry, a gap or overlap between the segments of one
epoch, a segment file no entry names.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from stream_processor.archive.manifest import GENESIS, MANIFEST, Entry, line_hash
from stream_processor.archive.segment import read_lines, sha256
from stream_processor.archive.storage import ArchiveStorage, as_storage


@dataclass(frozen=True)
class Problem:
    kind: str  # "missing segment", "altered segment", "reordered entries", ...
    detail: str

    def line(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class ArchiveReport:
    entries: int = 0
    segments_checked: int = 0
    records: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, detail: str) -> None:
        self.problems.append(Problem(kind, detail))


def verify_archive(
    root: str | Path | ArchiveStorage, *, read_segments: bool = True
) -> ArchiveReport:
    """``root``: an archive directory, or a storage (:func:`.storage.archive_storage`).

    Raises :class:`~audit_events.objectstore.ObjectStoreError` when the bucket
    cannot be read.
    """
    storage = as_storage(root)
    report = ArchiveReport()
    data = storage.read_manifest()
    files = storage.list_segment_files()
    if data is None:
        if any(f.endswith(".gz") for f in files):
            report.add(
                "missing manifest",
                f"{MANIFEST} of {storage.describe()} is absent but segments exist",
            )
        return report
    raw = data.split(b"\n")
    torn = raw.pop()
    if torn:
        report.add("torn last line", "an interrupted append (the archiver cuts it at start)")
    entries: list[tuple[int, Entry]] = []
    hashes: dict[str, int] = {}
    for i, line in enumerate(raw, start=1):
        hashes[line_hash(line)] = i
        try:
            entries.append((i, Entry.parse(line)))
        except (ValueError, TypeError, KeyError) as exc:
            report.add("malformed entry", f"manifest line {i}: {exc}")
    report.entries = len(entries)
    _chain(raw, entries, hashes, report)
    if read_segments:
        for i, e in entries:
            _segment(storage, i, e, report)
    _continuity(entries, report)
    listed = {e.path for _, e in entries}
    for rel in files:
        if rel not in listed:
            report.add(
                "unlisted segment file",
                f"{rel} (no manifest entry: an interrupted write, or a file put there)",
            )
    return report


def _chain(
    raw: list[bytes],
    entries: list[tuple[int, Entry]],
    hashes: dict[str, int],
    report: ArchiveReport,
) -> None:
    for i, e in entries:
        expected = line_hash(raw[i - 2]) if i > 1 else GENESIS
        if e.prev != expected:
            j = hashes.get(e.prev)
            if e.prev == GENESIS:
                report.add(
                    "reordered entries",
                    f"manifest line {i} ({e.path}) is the first entry, now at line {i}",
                )
            elif j is not None:
                report.add(
                    "reordered entries",
                    f"manifest line {i} ({e.path}) follows line {j}'s entry, not line {i - 1}'s",
                )
            else:
                report.add(
                    "broken chain",
                    f"manifest line {i} ({e.path}): the entry before it was edited or removed",
                )
        if e.n != i - 1:
            report.add(
                "entry number",
                f"manifest line {i} ({e.path}) is entry {e.n + 1}: entries removed, added "
                "or reordered",
            )


def _segment(storage: ArchiveStorage, i: int, e: Entry, report: ArchiveReport) -> None:
    try:
        data = storage.read_segment(e.path)
    except FileNotFoundError:
        report.add("missing segment", f"{e.path} (manifest line {i}, {e.count} records)")
        return
    report.bytes += len(data)
    if len(data) != e.size or sha256(data) != e.sha256:
        report.add(
            "altered segment",
            f"{e.path} (manifest line {i}): SHA-256 differs"
            + (
                f", {len(data)} bytes instead of {e.size}"
                if len(data) != e.size
                else " (same size: a changed byte)"
            ),
        )
        return
    try:
        lines = read_lines(data)
        offsets = [int(orjson.loads(line)["o"]) for line in lines]
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, KeyError) as exc:
        report.add("unreadable segment", f"{e.path}: {exc}")
        return
    report.segments_checked += 1
    report.records += len(lines)
    if len(lines) != e.count:
        report.add("count mismatch", f"{e.path}: {len(lines)} records, the entry says {e.count}")
    if offsets and (offsets[0], offsets[-1]) != (e.first_offset, e.last_offset):
        report.add(
            "offset mismatch",
            f"{e.path}: offsets {offsets[0]}..{offsets[-1]}, the entry says "
            f"{e.first_offset}..{e.last_offset}",
        )
    if any(b <= a for a, b in itertools.pairwise(offsets)) or (
        offsets and offsets[0] < e.from_offset
    ):
        report.add("offset order", f"{e.path}: offsets not increasing from {e.from_offset}")


def _continuity(entries: list[tuple[int, Entry]], report: ArchiveReport) -> None:
    last: dict[tuple[str, int], tuple[int, Entry]] = {}
    for i, e in entries:
        key = (e.topic, e.partition)
        if key in last:
            j, p = last[key]
            if e.epoch < p.epoch:
                report.add(
                    "epoch order",
                    f"manifest line {i} ({e.path}) is epoch {e.epoch} after epoch {p.epoch}",
                )
            elif e.epoch == p.epoch and e.from_offset != p.next_offset:
                kind = "gap" if e.from_offset > p.next_offset else "overlap"
                report.add(
                    kind,
                    f"{e.topic}/{e.partition} epoch {e.epoch}: line {i} starts at offset "
                    f"{e.from_offset}, line {j} ended at {p.next_offset}",
                )
            elif e.epoch > p.epoch and not e.epoch_reason:
                report.add("epoch order", f"manifest line {i}: epoch {e.epoch} without a reason")
        last[key] = (i, e)
