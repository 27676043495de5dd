"""A restarted worker resumes from its group's committed offsets, not from offset 0:
it reads only what arrived after the last commit and continues every tenant's chain
from the stored head (seq 1, 2, 3, … with no gap or repeat)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from auditstream.embedded import free_port
from tests.conftest import ProcessorProcess
from tests.helpers import event_record, eventually, scrape

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


async def committed(settings: AuditSettings) -> dict[int, int]:
    """The processor group's committed offsets (read without joining the group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.processor_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        out: dict[int, int] = {}
        for p in range(settings.kafka_partitions):
            offset = await consumer.committed(TopicPartition(settings.topic_events, p))
            if offset is not None and offset > 0:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


async def settled(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]], n: int
) -> dict[int, int]:
    """Wait until ``n`` events are stored and their offsets committed; the offsets."""

    async def done() -> dict[int, int] | None:
        offsets = await committed(settings)
        stored = await store.count_documents({})
        return offsets if stored == n and sum(offsets.values()) == n else None

    result: dict[int, int] = await eventually(done, 120, 0.5, what=f"{n} stored and committed")
    return result


async def test_a_restarted_worker_resumes_from_the_committed_offsets(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    first = processors()
    await produce(settings, range(0, 30))
    before = await settled(settings, store, 30)
    first.stop()
    assert len(before) >= 2 and all(o > 0 for o in before.values()), before  # not offset 0

    await produce(settings, range(30, 50))  # while no worker runs
    port = free_port()
    processors(AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port))

    def stored_new() -> dict[str, float] | None:
        try:
            metrics = scrape(port)
        except httpx.HTTPError:  # not serving yet
            return None
        return metrics if metrics.get("auditstream_events_stored_total", 0) >= 20 else None

    metrics = await eventually(stored_new, 120, 0.5, what="the restarted worker stores")
    # From offset 0 it would have read the first 30 again (skipped as duplicates).
    assert metrics.get("auditstream_events_duplicate_total", 0) == 0, metrics
    assert metrics["auditstream_events_stored_total"] == 20, metrics
    await settled(settings, store, 50)
    for tenant in TENANTS:  # each chain continues from the head the first worker left
        seqs = [d["seq"] async for d in store.find({"tenant": tenant}).sort("seq", 1)]
        assert seqs == list(range(1, len(seqs) + 1)), (tenant, seqs)
        ids = [d["id"] async for d in store.find({"tenant": tenant}).sort("seq", 1)]
        assert ids == sorted(ids), (tenant, ids)  # produced order: the chain was not re-begun
