"""The worker's fetch wait on the embedded broker (Tansu, docs/processor.md Latency).

Tansu does not wake a fetch when a record arrives: it looks at 0, W/2, 3W/4, ...
of the fetch wait W and answers at the first look that finds records. A serial
producer (one ``?wait=true`` client) publishes its next event just after the
previous fetch was answered, so each event waited for the look at W/2. While
records arrive that a ``?wait=true`` request waits for (the API sets a header on
them), the worker now fetches with the short ``KAFKA_FETCH_ACTIVE_WAIT_MS``.

The long wait is set to 2 s here so the assertion compares against it, not
against wall-clock figures of a loaded 2-core machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.notify import WAIT_HEADER
from audit_events.settings import AuditSettings
from audit_events.storage import event_key
from tests.conftest import ProcessorProcess
from tests.helpers import event_record, eventually

pytestmark = pytest.mark.integration
IDLE_WAIT_MS = 2000  # AUDITSTREAM_KAFKA_FETCH_MAX_WAIT_MS of this worker
WAITED = [(WAIT_HEADER, b"1")]


async def stored_after(
    producer: AIOKafkaProducer,
    settings: AuditSettings,
    store: AsyncCollection[dict[str, Any]],
    n: int,
    timeout: float,
) -> float:
    """Seconds from producing event ``n`` (as the API does for ``?wait=true``) until
    the store holds it."""
    key, value = event_record(n)
    started = time.monotonic()
    await producer.send_and_wait(settings.topic_events, value, key=key, headers=WAITED)
    _id = event_key("acme", f"acme-{n:06d}")
    await eventually(
        lambda: store.find_one({"_id": _id}, {"_id": 1}), timeout, 0.005, what=f"event {n} stored"
    )
    return time.monotonic() - started


async def test_a_serial_producers_events_are_not_held_by_the_brokers_fetch_wait(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors(AUDITSTREAM_KAFKA_FETCH_MAX_WAIT_MS=str(IDLE_WAIT_MS))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await stored_after(producer, settings, store, 0, 120)  # the group formed, it stores
        delays = [await stored_after(producer, settings, store, n, 30) for n in range(1, 9)]
    finally:
        await producer.stop()
    print(f"FIGURES serial events stored after {[round(d, 3) for d in delays]} s")  # with -s
    # Before: each waited for Tansu's look at half the 2 s wait (~0.95-1.0 s);
    # now for one at most 25 ms into the 50 ms active wait, then one write.
    assert statistics.median(delays) < IDLE_WAIT_MS / 4000, delays
