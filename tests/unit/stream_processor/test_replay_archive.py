"""Which archived records a replay reads, and in which chunks (pure: a directory archive)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit_events.settings import AuditSettings
from stream_processor.archive.reader import ArchiveReader
from stream_processor.replay import Replayer
from tests.unit.stream_processor.test_archive import archive

pytestmark = pytest.mark.unit


def chunks(root: Path, since: datetime | None, batch: int) -> list[list[tuple[int, int]]]:
    settings = AuditSettings(
        kafka_bootstrap="127.0.0.1:1",
        mongo_uri="mongodb://127.0.0.1:1",
        topic_events="audit.events",
    )
    replayer = Replayer(settings, batch_size=batch)
    got = replayer._archived_chunks(ArchiveReader(root), [0, 1], since)
    return [[(r.partition, r.offset) for r in chunk] for chunk in got]


def test_every_archived_record_in_order_a_partition_per_chunk(tmp_path: Path) -> None:
    archive(tmp_path)  # 2 partitions of 12 records, offsets 0..11
    got = chunks(tmp_path, None, 5)
    assert [len(c) for c in got] == [5, 5, 2, 5, 5, 2]
    assert [r for c in got for r in c] == [(p, o) for p in (0, 1) for o in range(12)]


def test_since_starts_each_partition_at_its_first_record_of_that_time(tmp_path: Path) -> None:
    archive(tmp_path)  # record timestamps: 1_700_000_000_000 + offset (ms)
    since = datetime.fromtimestamp((1_700_000_000_000 + 7) / 1000, tz=UTC)
    got = chunks(tmp_path, since, 3)
    assert got == [
        [(0, 7), (0, 8), (0, 9)],
        [(0, 10), (0, 11)],
        [(1, 7), (1, 8), (1, 9)],
        [(1, 10), (1, 11)],
    ]
