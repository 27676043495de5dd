"""Adaptive batching on the real stack: an idle stream stores a lone event at once,
a backlog is still stored in full batches (docs/processor.md, Steps: Step 1).

The batch interval is set long (2 s) so the assertions compare against it, not
against wall-clock figures of a loaded 2-core machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from audit_events.storage import event_key
from audit_events.topic_admin import ensure_topics
from auditstream.embedded import free_port
from tests.conftest import ProcessorProcess
from tests.helpers import event_record, eventually, scrape

pytestmark = pytest.mark.integration
INTERVAL_MS = 2000  # AUDITSTREAM_BATCH_MAX_MS of these workers


async def stored_after(
    producer: AIOKafkaProducer,
    settings: AuditSettings,
    store: AsyncCollection[dict[str, Any]],
    n: int,
    timeout: float = 120.0,
) -> float:
    """Seconds from producing event ``n`` until the store holds it."""
    key, value = event_record(n)
    started = time.monotonic()
    await producer.send_and_wait(settings.topic_events, value, key=key)
    _id = event_key("acme", f"acme-{n:06d}")
    await eventually(
        lambda: store.find_one({"_id": _id}, {"_id": 1}), timeout, 0.01, what=f"event {n} stored"
    )
    return time.monotonic() - started


async def test_an_idle_stream_stores_a_lone_event_well_before_the_batch_interval(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors(AUDITSTREAM_BATCH_MAX_MS=str(INTERVAL_MS))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await stored_after(producer, settings, store, 0)  # the group formed, the worker stores
        delays = [await stored_after(producer, settings, store, n, 30) for n in (1, 2, 3)]
    finally:
        await producer.stop()
    print(f"FIGURES lone event stored after {[round(d, 3) for d in delays]} s")  # with -s
    # Before: each waited out the 2 s interval (2.0-2.05 s); now one fetch and one write.
    assert statistics.median(delays) < INTERVAL_MS / 2000, delays


async def test_a_backlog_is_still_stored_in_full_batches(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    events, batch = 600, 200
    await ensure_topics(settings)  # as the worker would; auto-created topics keep records finitely
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:  # produced before any worker runs: the worker starts behind
        for n in range(events):
            key, value = event_record(n)
            await producer.send(settings.topic_events, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    port = free_port()
    processors(
        AUDITSTREAM_BATCH_MAX_MS=str(INTERVAL_MS),
        AUDITSTREAM_BATCH_MAX_EVENTS=str(batch),
        AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port),
    )

    def all_stored() -> dict[str, float] | None:
        try:
            metrics = scrape(port)
        except httpx.HTTPError:  # not serving yet
            return None
        return metrics if metrics.get("auditstream_events_stored_total", 0) >= events else None

    metrics = await eventually(all_stored, 120, 0.2, what=f"{events} stored")
    # One partition (one tenant), 600 events, batches of at most 200: a loop that
    # flushed whenever its queue ran dry (no high-watermark probe) took 5 batches.
    batches = metrics["auditstream_batch_size_count"]
    print(f"FIGURES backlog of {events} stored in {batches:.0f} batches")  # with -s
    assert batches <= events / batch + 1, metrics
    # ... and none of them waited out the interval (each was full, or the last one caught up).
    assert metrics["auditstream_batch_wait_seconds_sum"] < INTERVAL_MS / 1000, metrics
