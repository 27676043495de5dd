"""The producer SDK against the real broker (Tansu): acks, keys, and the spool across
a broker outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from audit_events.settings import AuditSettings
from producers import AuditProducer, ProducerConfig
from tests.conftest import Backends

pytestmark = pytest.mark.integration


async def consume(
    settings: AuditSettings, count: int, timeout: float = 60.0
) -> list[dict[str, Any]]:
    """Read ``count`` events from the start of the events topic (or fail)."""
    consumer = AIOKafkaConsumer(
        settings.topic_events,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        partitions = consumer.partitions_for_topic(settings.topic_events) or set()
        assert len(partitions) == settings.kafka_partitions  # created by us, not auto-created
        while len(out) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    assert rec.value is not None and rec.key is not None
                    event = orjson.loads(rec.value)
                    assert rec.key == event["tenant"].encode()
                    out.append(event)
    finally:
        await consumer.stop()
    return out


def producer_config(settings: AuditSettings, tmp_path: Path, **kw: object) -> ProducerConfig:
    return ProducerConfig.from_settings(
        settings,
        service="test-suite",
        spool_path=tmp_path / "spool.db",
        request_timeout_ms=3000,
        delivery_timeout=5.0,
        reconnect_initial=0.2,
        reconnect_max=1.0,
        **kw,
    )


async def test_emit_is_acknowledged_keyed_and_compressed(
    settings: AuditSettings, tmp_path: Path
) -> None:
    cfg = producer_config(settings, tmp_path, compression="gzip")
    async with AuditProducer(cfg) as producer:
        receipt = await producer.emit(
            id="evt-p-1", tenant="acme", action="invoice.update", actor="alice",
            target=("invoice", "42"), changes={"total": (10, 12)},
        )  # fmt: skip
        assert receipt.status == "acknowledged" and receipt.offset == 0
        for i in range(20):
            producer.emit_nowait(tenant=f"t{i % 3}", action="doc.read", id=f"evt-p-n{i}")
        await producer.flush(30)
        assert producer.stats().acknowledged == 21
    events = await consume(settings, 21)
    assert len(events) == 21
    first = next(e for e in events if e["id"] == "evt-p-1")
    assert first["changes"] == {"total": {"old": 10, "new": 12}}
    assert first["source"] == {"service": "test-suite"}
    for tenant in ("t0", "t1", "t2"):  # one tenant's events keep their order
        ids = [e["id"] for e in events if e["tenant"] == tenant]
        assert ids == sorted(ids, key=lambda s: int(s.removeprefix("evt-p-n")))


async def test_broker_outage_spools_and_drains_everything(
    settings: AuditSettings, backends: Backends, tmp_path: Path
) -> None:
    if "kafka" not in backends.servers:
        pytest.skip("needs the embedded broker to stop and restart it")
    kafka = backends.servers["kafka"]
    async with AuditProducer(producer_config(settings, tmp_path)) as producer:
        assert (await producer.emit(tenant="acme", action="before.outage")).status == "acknowledged"

        kafka.stop()
        down_ids = [
            producer.emit_nowait(tenant=f"t{i % 4}", action="during.outage", metadata={"n": i})
            for i in range(300)
        ]
        awaited = await producer.emit(tenant="acme", action="during.outage", metadata={"n": 300})
        assert awaited.status == "spooled"
        down_ids.append(awaited.id)
        await producer.flush(30)
        spooled_while_down = producer.spool_size
        assert spooled_while_down == 301
        assert producer.stats().connected is False

        await asyncio.to_thread(kafka.start)  # Tansu restarts empty: the topic is gone
        await producer.wait_spool_empty(90)
        stats = producer.stats()
    # Tansu lost the topic with the restart, so what is there came from the spool.
    events = await consume(settings, 301)
    got = [e["id"] for e in events]
    print(
        f"\nspool figures: emitted while down={len(down_ids)} spooled={spooled_while_down} "
        f"drained={stats.drained} consumed after restart={len(got)} distinct={len(set(got))}"
    )
    assert sorted(got) == sorted(down_ids) and len(got) == 301
    for tenant in ("t0", "t1", "t2", "t3"):
        ns = [e["metadata"]["n"] for e in events if e["tenant"] == tenant]
        assert ns == sorted(ns)
    assert stats.drained == 301
