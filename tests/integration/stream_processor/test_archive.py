"""The archiver against a real broker: every record exactly once, through kills and restarts."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from audit_events.settings import AuditSettings, settings_env
from audit_events.topic_admin import ensure_topics
from stream_processor.archive.archiver import Archiver
from stream_processor.archive.reader import ArchiveReader
from stream_processor.archive.status import archive_status
from stream_processor.archive.verify import verify_archive
from stream_processor.offsets import true_end_offsets
from tests.helpers import eventually

pytestmark = pytest.mark.integration
Key = tuple[str, int, int]  # topic, partition, offset


@pytest.fixture
def settings(settings: AuditSettings, tmp_path: Path) -> AuditSettings:
    return settings.model_copy(
        update={
            "archive_dir": str(tmp_path / "archive"),
            "archive_segment_seconds": 0.3,
            "archive_segment_bytes": 4096,  # many segments
            "archiver_metrics_port": 0,
            "archiver_group": f"{settings.processor_group}-archiver",
        }
    )


async def produce(
    settings: AuditSettings, n: int, prefix: str, *, pause_every: int = 0, pause: float = 0.0
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futures = []
        for i in range(n):
            tenant = ("acme", "globex", "initech")[i % 3]
            value = b'{"id": "%s-%d", "tenant": "%s", "action": "doc.edit"}' % (
                prefix.encode(),
                i,
                tenant.encode(),
            )
            futures.append(
                await producer.send(
                    settings.topic_events,
                    value,
                    key=tenant.encode(),
                    headers=[("trace", f"{prefix}{i}".encode()), ("bin", b"\xff\x00")],
                )
            )
            if i % 10 == 0:
                futures.append(
                    await producer.send(settings.topic_checkpoints, b'{"cp": %d}' % i, key=b"acme")
                )
            if pause_every and i % pause_every == pause_every - 1:
                await asyncio.gather(*futures)
                futures = []
                await asyncio.sleep(pause)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def topic_records(settings: AuditSettings) -> dict[Key, tuple[Any, ...]]:
    """Every record of the events and checkpoints topics, by (topic, partition, offset)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    out: dict[Key, tuple[Any, ...]] = {}
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in (settings.topic_events, settings.topic_checkpoints)
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(tps)
        ends_tp: dict[TopicPartition, int] = {}
        for tp in tps:  # true_end_offsets keys by partition: one topic at a time
            ends_tp[tp] = (await true_end_offsets(consumer, [tp]))[tp.partition]
        await consumer.seek_to_beginning(*tps)
        while len(out) < sum(ends_tp.values()):
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                for m in messages:
                    if m.offset < ends_tp[tp]:
                        out[(m.topic, m.partition, m.offset)] = (
                            m.key,
                            m.value,
                            tuple((n, v) for n, v in m.headers),
                            m.timestamp,
                        )
    finally:
        await consumer.stop()
    return out


def archived(settings: AuditSettings) -> list[tuple[Key, tuple[Any, ...], int]]:
    """Every archived record with its epoch, in manifest order."""
    reader = ArchiveReader(settings.archive_path())
    out = []
    for e in reader.manifest.entries:
        for r in reader.records([e]):
            out.append(
                (
                    (r.topic, r.partition, r.offset),
                    (r.key, r.value, r.headers, r.timestamp_ms),
                    e.epoch,
                )
            )
    return out


async def archive_until(settings: AuditSettings, want: int, timeout: float = 60.0) -> Archiver:
    archiver = Archiver(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))

    def caught_up() -> bool:
        assert not task.done(), task
        return sum(e.count for e in archiver.manifest.entries) >= want

    await eventually(caught_up, timeout, what="the archiver did not catch up")
    stop.set()
    await task
    return archiver


async def test_the_archive_holds_every_record_of_both_topics_as_it_was(
    settings: AuditSettings,
) -> None:
    await ensure_topics(settings)
    await produce(settings, 400, "a")
    topic = await topic_records(settings)
    archiver = await archive_until(settings, len(topic))
    got = archived(settings)
    assert {k: v for k, v, _ in got} == topic  # key, value, headers, timestamp, position
    assert len(got) == len(topic) == 440
    assert len(archiver.manifest.entries) > 8  # closed by size and age
    report = verify_archive(settings.archive_path())
    assert report.ok and report.records == 440, report.problems
    rows = await archive_status(
        settings.archive_path(),
        settings.kafka_bootstrap,
        [settings.topic_events, settings.topic_checkpoints],
    )
    assert rows and all(r.lag_records == 0 for r in rows), rows
    assert {r.epoch for r in rows if r.segments} == {0}
    # more events: the next run continues where the manifest ends, in the same epoch
    await produce(settings, 60, "b")
    topic = await topic_records(settings)
    await archive_until(settings, len(topic))
    got = archived(settings)
    assert {k: v for k, v, _ in got} == topic and len(got) == len(topic)
    assert {epoch for *_, epoch in got} == {0}


class ArchiverProcess:
    def __init__(self, settings: AuditSettings, log: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
            **settings_env(settings),
            "AUDITSTREAM_JWT_SECRET": "unused-by-the-archiver-0123456789abcdef",
        }
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditstream", "archiver"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(30)


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(3000, marks=pytest.mark.timeout(300)),
        pytest.param(20_000, marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
async def test_sigkilled_archiver_loses_and_repeats_nothing(
    n: int, settings: AuditSettings, tmp_path: Path
) -> None:
    """SIGKILL at random moments during an ingest (at least 5 kills): each record is
    archived exactly once (by partition and offset), no manifest gap, verify passes."""
    await ensure_topics(settings)
    arch = ArchiverProcess(settings, tmp_path / "archiver.log")
    ingest = asyncio.create_task(produce(settings, n, "k", pause_every=150, pause=0.25))
    rng = random.Random(16)
    kills = 0
    try:
        arch.start()
        while kills < 5 or not ingest.done():
            await asyncio.sleep(rng.uniform(0.8, 2.5))  # startup (imports) is ~1 s of it
            arch.signal(signal.SIGKILL)
            kills += 1
            arch.start()
        await ingest
        topic = await topic_records(settings)
        await eventually(
            lambda: sum(1 for _ in _entries_count(settings)) >= len(topic),
            90,
            0.5,
            what=f"every record archived (log: {tmp_path / 'archiver.log'})",
        )
    finally:
        arch.signal(signal.SIGTERM)
    got = archived(settings)
    keys = [k for k, _, _ in got]
    assert len(keys) == len(set(keys)), "a record archived twice"
    assert {k: v for k, v, _ in got} == topic
    report = verify_archive(settings.archive_path())
    assert report.ok, [p.line() for p in report.problems]
    print(f"\n{kills} kills; {report.entries} segments, {report.records} records, ok")
    assert kills >= 5


def _entries_count(settings: AuditSettings) -> list[int]:
    path = Path(settings.archive_path())
    if not (path / "manifest.ndjson").exists():
        return []
    reader = ArchiveReader(path)
    return [0 for e in reader.manifest.entries for _ in range(e.count)]


async def recreate_topics(settings: AuditSettings) -> None:
    """A topic whose history restarts: deleted and created again (offsets from 0)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([settings.topic_events, settings.topic_checkpoints])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)
    await ensure_topics(settings)


async def test_a_restarted_history_opens_a_new_epoch_and_keeps_the_old_segments(
    settings: AuditSettings,
) -> None:
    await ensure_topics(settings)
    await produce(settings, 90, "one")
    first = await topic_records(settings)
    await archive_until(settings, len(first))
    root = Path(settings.archive_path())
    before = {p: p.read_bytes() for p in (root / "segments").rglob("*.gz")}

    await recreate_topics(settings)  # fewer records than archived: offsets go backwards
    await produce(settings, 30, "two")
    second = await topic_records(settings)
    await archive_until(settings, len(first) + len(second))
    await recreate_topics(settings)  # more records than archived: other records at the offsets
    await produce(settings, 150, "three")
    third = await topic_records(settings)
    archiver = await archive_until(settings, len(first) + len(second) + len(third))

    assert all(p.read_bytes() == data for p, data in before.items())  # never overwritten
    got = archived(settings)
    by_epoch: dict[int, dict[Key, tuple[Any, ...]]] = {}
    for k, v, epoch in got:
        assert k not in by_epoch.setdefault(epoch, {})
        by_epoch[epoch][k] = v
    assert by_epoch == {0: first, 1: second, 2: third}
    reasons = [e.epoch_reason for e in archiver.manifest.entries if e.epoch_reason]
    assert any("before the archived" in r for r in reasons), reasons
    assert any("not the archived one" in r for r in reasons), reasons
    assert verify_archive(root).ok


async def test_a_running_archiver_notices_its_topic_start_over(settings: AuditSettings) -> None:
    """The topic is recreated under a running archiver: fetching past the new end
    makes it decide again, and the new records go into a new epoch."""
    await ensure_topics(settings)
    await produce(settings, 60, "one")
    first = await topic_records(settings)
    archiver = Archiver(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:

        def count(epoch: int) -> int:
            return sum(e.count for e in archiver.manifest.entries if e.epoch == epoch)

        def stopped() -> str | None:
            return f"the archiver stopped: {task}" if task.done() else None

        await eventually(lambda: count(0) >= len(first), 60, what="epoch 0", abort=stopped)
        await recreate_topics(settings)
        await produce(settings, 15, "two")
        second = await topic_records(settings)
        await eventually(lambda: count(1) >= len(second), 60, what="epoch 1", abort=stopped)
    finally:
        stop.set()
        await task
    by_epoch: dict[int, dict[Key, tuple[Any, ...]]] = {}
    for k, v, epoch in archived(settings):
        by_epoch.setdefault(epoch, {})[k] = v
    assert by_epoch == {0: first, 1: second}
    assert verify_archive(settings.archive_path()).ok
