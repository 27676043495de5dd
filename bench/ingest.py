"""Scenario 1, ingestion: the processor's steady-state rate beside the store's ceiling
(``insert_many``, same documents, same indexes) and the seeds' ``insert_one`` per event.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient, IndexModel
from pymongo.write_concern import WriteConcern
from stack import Stack

from audit_events.chain import GENESIS, seal
from audit_events.codec import encode_event
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION
from audit_events.store_adapter import capabilities_of, chain_index_model
from audit_events.topic_admin import ensure_topics
from audit_events.topics import partition_key


async def produce(settings: AuditSettings, events: list[AuditEvent]) -> float:
    await ensure_topics(settings)  # from the spec, before a produce auto-creates it
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [
            await producer.send(settings.topic_events, encode_event(e), key=partition_key(e.tenant))
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events) / (time.perf_counter() - started)


async def wait_count(settings: AuditSettings, expected: int, timeout: float) -> tuple[float, float]:
    """Seconds from the first stored event to ``expected`` stored; and the time to first.

    Progress is read from the processor group's committed offsets (the processor
    commits only stored batches), not by counting documents: SecantusDB counts by
    scanning the collection, and polling a scan would steal the server time being
    measured (a profile of the first run showed 38% of the server in ``count``).
    One real count confirms the end.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.processor_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    t0 = time.perf_counter()
    first = None
    n = 0
    try:
        await consumer.topics()  # refresh metadata: the topic exists, events were produced
        partitions = consumer.partitions_for_topic(settings.topic_events) or set()
        tps = [TopicPartition(settings.topic_events, p) for p in sorted(partitions)]
        while time.perf_counter() - t0 < timeout:
            n = 0
            for tp in tps:
                offset = await consumer.committed(tp)
                n += offset if offset and offset > 0 else 0
            if n and first is None:
                first = time.perf_counter()
            if n >= expected:
                assert first is not None
                done = time.perf_counter()
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
                stored = await client[settings.mongo_db][EVENTS_COLLECTION].count_documents({})
                await client.close()
                if stored < expected:
                    raise AssertionError(f"offsets committed for {n} but {stored} stored")
                return done - first, first - t0
            await asyncio.sleep(0.1)
        raise TimeoutError(f"only {n} of {expected} committed after {timeout}s")
    finally:
        await consumer.stop()


async def fresh_collection(
    client: AsyncMongoClient[dict[str, Any]], settings: AuditSettings, name: str, indexed: bool
) -> Any:
    """A dropped-and-recreated collection; ``indexed``: the processor's exact indexes."""
    coll = client[settings.mongo_db][name].with_options(
        write_concern=WriteConcern(w="majority", j=True)
    )
    await coll.drop()
    if indexed:
        chain_index = chain_index_model(await capabilities_of(coll))  # as the processor
        await coll.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES] + [chain_index])
    return coll


async def store_ceiling(
    settings: AuditSettings, docs: list[dict[str, Any]], batch: int, indexed: bool
) -> float:
    """``insert_many`` of ``docs`` (``batch`` at a time, unordered) into a fresh collection.

    ``indexed``: with exactly the indexes the processor maintains (the fair ceiling);
    otherwise ``_id`` only (the server's raw rate).
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = await fresh_collection(client, settings, "ceiling", indexed)
    sealed = _sealed([dict(d) for d in docs])
    started = time.perf_counter()
    for i in range(0, len(sealed), batch):
        await coll.insert_many(sealed[i : i + batch], ordered=False)
    rate = len(docs) / (time.perf_counter() - started)
    await coll.drop()
    await client.close()
    return rate


def _sealed(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give documents their per-tenant seq and hash, as the processor does."""
    heads: dict[str, tuple[int, str]] = {}
    for doc in docs:
        seq, prev = heads.get(doc["tenant"], (0, GENESIS))
        heads[doc["tenant"]] = (seq + 1, seal(doc, seq + 1, prev))
    return docs


async def per_event_inserts(settings: AuditSettings, docs: list[dict[str, Any]]) -> float:
    """The seeds' approach: one ``insert_one`` per event, same indexes."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = await fresh_collection(client, settings, "per_event", indexed=True)
    sealed = _sealed([dict(d) for d in docs])
    started = time.perf_counter()
    for doc in sealed:
        await coll.insert_one(doc)
    rate = len(docs) / (time.perf_counter() - started)
    await coll.drop()
    await client.close()
    return rate


async def ingestion(
    stack: Stack, name: str, events: list[AuditEvent], workers: int, timeout: float
) -> dict[str, float]:
    settings = stack.settings(name)
    produced_rate = await produce(settings, events)
    for _ in range(workers):
        stack.spawn(settings, "processor")
    seconds, to_first = await wait_count(settings, len(events), timeout)
    stack.stop_children()
    return {
        "events": len(events),
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
        "startup_s": to_first,
        "producer_events_per_s": produced_rate,
    }
