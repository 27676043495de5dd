"""The archive's pure parts: segment format, manifest chain, epochs, verify's tamper names."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import orjson
import pytest

from stream_processor.archive.archiver import Buffer, clean_unpublished, publish_segments
from stream_processor.archive.epochs import TopicView, decide
from stream_processor.archive.manifest import MANIFEST, Manifest
from stream_processor.archive.reader import ArchiveError, ArchiveReader
from stream_processor.archive.segment import (
    ArchivedRecord,
    compress,
    decode_line,
    encode_line,
    record_digest,
)
from stream_processor.archive.verify import verify_archive
from stream_processor.records import Record

pytestmark = pytest.mark.unit


def rec(offset: int, partition: int = 0, value: bytes | None = None) -> Record:
    return Record(
        "audit.events",
        partition,
        offset,
        1_700_000_000_000 + offset,
        b"acme",
        value if value is not None else b'{"id": "e%d", "tenant": "acme"}' % offset,
        (("trace", b"\x00\xff"), ("x", None)),
    )


def test_a_record_survives_the_segment_format_byte_for_byte() -> None:
    odd = Record("t", 3, 7, -1, None, b"\xff\xfe not utf-8", (("h", b"\xc3\x28"),))
    tomb = Record("t", 3, 8, 5, b"k", None, ())
    for r in (rec(1), odd, tomb):
        back = decode_line(encode_line(ArchivedRecord(r, 1)), r.topic, r.partition)
        assert back == ArchivedRecord(r, 1)
    # the same records always compress to the same bytes (fixed gzip time)
    lines = [encode_line(ArchivedRecord(rec(i))) for i in range(5)]
    assert compress(lines) == compress(lines)
    assert gzip.decompress(compress(lines)) == b"".join(lines)


def archive(root: Path, segments: int = 3, per: int = 4, partitions: int = 2) -> Manifest:
    m = Manifest.load(root)
    offset = dict.fromkeys(range(partitions), 0)
    for _ in range(segments):
        closing = []
        for p in range(partitions):
            b = Buffer(0, offset[p], "first" if offset[p] == 0 else None)
            for _ in range(per):
                b.add(rec(offset[p], p), 0)
                offset[p] += 1
            closing.append(("audit.events", p, b))
        asyncio.run(publish_segments(root, m, closing))
    return m


def test_an_untouched_archive_verifies_and_reads_back_in_order(tmp_path: Path) -> None:
    archive(tmp_path)
    report = verify_archive(tmp_path)
    assert report.ok, report.problems
    assert (report.entries, report.records) == (6, 24)
    reader = ArchiveReader(tmp_path)
    offsets = [r.offset for r in reader.records(reader.entries("audit.events", 1))]
    assert offsets == list(range(12))


def test_verify_names_a_missing_segment(tmp_path: Path) -> None:
    m = archive(tmp_path)
    (tmp_path / m.entries[2].path).unlink()
    kinds = [p.kind for p in verify_archive(tmp_path).problems]
    assert kinds == ["missing segment"]
    with pytest.raises(ArchiveError, match="missing"):
        reader = ArchiveReader(tmp_path)
        list(reader.records(reader.entries("audit.events", 0)))


def test_verify_names_a_flipped_byte(tmp_path: Path) -> None:
    m = archive(tmp_path)
    path = tmp_path / m.entries[3].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_archive(tmp_path).problems
    assert [p.kind for p in problems] == ["altered segment"]
    assert m.entries[3].path in problems[0].detail and "changed byte" in problems[0].detail


def test_verify_names_reordered_entries(tmp_path: Path) -> None:
    archive(tmp_path)
    lines = (tmp_path / MANIFEST).read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / MANIFEST).write_bytes(b"".join(lines))
    kinds = {p.kind for p in verify_archive(tmp_path).problems}
    assert "reordered entries" in kinds
    with pytest.raises(ArchiveError, match="hash chain"):
        ArchiveReader(tmp_path)


def test_verify_names_a_removed_entry_and_an_edited_one(tmp_path: Path) -> None:
    archive(tmp_path)
    lines = (tmp_path / MANIFEST).read_bytes().splitlines(keepends=True)
    (tmp_path / MANIFEST).write_bytes(b"".join(lines[:2] + lines[3:]))
    problems = verify_archive(tmp_path).problems
    kinds = {p.kind for p in problems}
    assert {"broken chain", "unlisted segment file", "gap"} <= kinds, problems
    # an entry edited to hide a record (count 4 -> 3): the next entry's prev no longer matches
    archive(tmp_path / "b")
    lines = (tmp_path / "b" / MANIFEST).read_bytes().splitlines(keepends=True)
    d = orjson.loads(lines[0])
    d["count"] = 3
    lines[0] = orjson.dumps(d, option=orjson.OPT_SORT_KEYS) + b"\n"
    (tmp_path / "b" / MANIFEST).write_bytes(b"".join(lines))
    kinds = {p.kind for p in verify_archive(tmp_path / "b").problems}
    assert {"broken chain", "count mismatch"} <= kinds


def test_a_torn_manifest_line_and_unpublished_files_are_cleaned_at_start(tmp_path: Path) -> None:
    m = archive(tmp_path, segments=1)
    with open(tmp_path / MANIFEST, "ab") as f:
        f.write(b'{"n": 2, "topic": "aud')  # killed mid-append
    stray = (
        tmp_path / "segments/audit.events/0/e0/00000000000000000004-00000000000000000007.ndjson.gz"
    )
    stray.write_bytes(b"half")  # renamed, but killed before its entry
    (stray.parent / ".x.tmp").write_bytes(b"")
    kinds = {p.kind for p in verify_archive(tmp_path).problems}
    assert kinds == {"torn last line", "unlisted segment file"}
    again = Manifest.load(tmp_path)
    again.cut_torn_tail()
    assert len(clean_unpublished(tmp_path, again)) == 2
    assert verify_archive(tmp_path).ok and len(again.entries) == len(m.entries)


def test_epochs_continue_or_restart() -> None:
    m = Manifest(Path("."))
    assert decide(None, TopicView(0, 10, None)).epoch == 0
    b = Buffer(0, 0)
    for i in range(10):
        b.add(rec(i), 0)
    state_entry = {
        "n": 0, "topic": "t", "partition": 0, "epoch": 2, "from_offset": 0, "first_offset": 0,
        "last_offset": 9, "count": 10, "size": 1, "raw_bytes": 1, "sha256": "", "path": "",
        "first_ts": 0, "last_ts": 0, "last_record": record_digest(rec(9)), "written_at": "",
        "prev": "",
    }  # fmt: skip
    from stream_processor.archive.manifest import Entry

    m.entries.append(Entry(**state_entry))  # type: ignore[arg-type]
    st = m.state()[("t", 0)]
    same = decide(st, TopicView(0, 25, record_digest(rec(9))))
    assert (same.epoch, same.offset, same.new_epoch) == (2, 10, False)
    assert decide(st, TopicView(0, 10, None)).offset == 10  # nothing new yet
    backwards = decide(st, TopicView(0, 4, None))  # a restarted broker: 4 new events
    assert (backwards.epoch, backwards.offset) == (3, 0) and "ends at offset 4" in str(
        backwards.reason
    )
    other = decide(st, TopicView(0, 30, record_digest(rec(9, value=b"{}"))))
    assert (other.epoch, other.offset) == (3, 0) and "not the archived one" in str(other.reason)
    lost = decide(st, TopicView(15, 30, None))
    assert (lost.epoch, lost.offset) == (3, 15) and "10..14" in str(lost.reason)


def test_the_verify_command_names_problems_and_exits_1(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from auditstream.cli import main

    m = archive(tmp_path)
    ok = CliRunner().invoke(main, ["archive", "verify", "--dir", str(tmp_path)])
    assert ok.exit_code == 0 and "6 entries, 6 segments, 24 records" in ok.output, ok.output
    (tmp_path / m.entries[0].path).unlink()
    bad = CliRunner().invoke(main, ["archive", "verify", "--dir", str(tmp_path)])
    assert bad.exit_code == 1
    assert f"missing segment: {m.entries[0].path}" in bad.output
    status = CliRunner().invoke(main, ["archive", "status", "--dir", str(tmp_path), "--offline"])
    assert status.exit_code == 0 and "audit.events/1 epoch 0 archived to 12" in status.output
