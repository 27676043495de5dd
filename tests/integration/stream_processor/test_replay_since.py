"""``auditstream replay --since``: the events received before the time are copied from
the live store, the topic is replayed only from that time (``offsets_for_times``),
and the rebuilt store that is swapped in equals the live one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from stream_processor.archive.archiver import Archiver
from stream_processor.replay import store_digest
from tests.conftest import ProcessorProcess
from tests.helpers import event_record, eventually, run_cli
from tests.integration.stream_processor.test_archive import recreate_topics

pytestmark = pytest.mark.integration
TENANTS = ("acme", "globex", "initech")


async def produce(settings: AuditSettings, numbers: range) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in numbers:
            key, value = event_record(n, TENANTS[n % len(TENANTS)])
            await producer.send_and_wait(settings.topic_events, value, key=key)
    finally:
        await producer.stop()


async def stored(store: AsyncCollection[dict[str, Any]], n: int) -> None:
    async def count() -> bool:
        return await store.count_documents({}) >= n

    await eventually(count, 120, 0.3, what=f"{n} events stored")
    assert await store.count_documents({}) == n


async def test_replay_since_reads_the_topic_from_that_time_only(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors()
    await produce(settings, range(0, 30))  # before `since`: copied from the live store
    await stored(store, 30)
    await asyncio.sleep(1.0)  # record timestamps and received_at clearly apart from `since`
    since = datetime.now(UTC)
    await asyncio.sleep(1.0)
    await produce(settings, range(30, 50))  # after `since`: replayed from the topic
    await stored(store, 50)
    before = await store_digest(store)

    result = await asyncio.to_thread(
        run_cli,
        settings,
        "replay",
        "--since",
        since.isoformat(),
        AUDITSTREAM_ALLOW_UNSIGNED_CHAINS="true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # only the 20 records produced after `since` were read from the topic (all 50 without it)
    match = re.search(r"^(\d+) records in .*: (\d+) stored", result.stdout, re.M)
    assert match is not None, result.stdout
    assert (int(match[1]), int(match[2])) == (20, 20), result.stdout
    assert await store.count_documents({}) == 50
    assert await store_digest(store) == before  # same documents, seqs and hashes


async def test_replay_since_reads_the_archive_when_the_topic_no_longer_holds_that_time(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    tmp_path: Path,
) -> None:
    """The topic was recreated (a restarted broker): it holds nothing from ``since`` on,
    the archive does. ``replay --since`` copies the older events from the live store and
    replays the archived records of that time (by their timestamps), then the topic:
    the swapped-in store equals the live one."""
    settings = settings.model_copy(
        update={
            "archive_dir": str(tmp_path / "archive"),
            "archive_segment_seconds": 0.3,
            "archiver_metrics_port": 0,
            "archiver_group": f"{settings.processor_group}-archiver",
        }
    )
    worker = processors()
    stop = asyncio.Event()
    archiver = Archiver(settings)
    archiving = asyncio.create_task(archiver.run(stop))
    await produce(settings, range(0, 30))
    await stored(store, 30)
    await asyncio.sleep(1.0)
    since = datetime.now(UTC)
    await asyncio.sleep(1.0)
    await produce(settings, range(30, 50))
    await stored(store, 50)
    before = await store_digest(store)

    def archived_all() -> bool:
        assert not archiving.done(), archiving
        return (
            sum(e.count for e in archiver.manifest.entries if e.topic == settings.topic_events)
            >= 50
        )

    await eventually(archived_all, 60, what="50 records archived")
    stop.set()
    await archiving
    worker.kill()
    await recreate_topics(settings)  # the topic's history restarts: empty

    result = await asyncio.to_thread(
        run_cli,
        settings,
        "replay",
        "--since",
        since.isoformat(),
        AUDITSTREAM_ALLOW_UNSIGNED_CHAINS="true",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the 20 records archived after `since` were replayed from the archive, not all 50
    match = re.search(
        r"^(\d+) records in .*: (\d+) stored.*; (\d+) from the archive", result.stdout, re.M
    )
    assert match is not None, result.stdout
    assert (int(match[1]), int(match[2]), int(match[3])) == (20, 20, 20), result.stdout
    assert await store_digest(store) == before  # same documents, seqs and hashes
