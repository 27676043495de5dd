"""``auditstream replay --since``: the events received before the time are copied from
the live store, the topic is replayed only from that time (``offsets_for_times``),
and the rebuilt store that is swapped in equals the live one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from stream_processor.replay import store_digest
from tests.conftest import ProcessorProcess
from tests.helpers import event_record, eventually, run_cli

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
