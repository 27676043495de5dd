"""Replay rebuilds the store from the topic: identical documents, live ingestion goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.codec import encode_event
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import REPLAY_STATE_COLLECTION
from stream_processor.replay import Replayer, store_digest, true_end_offsets
from tests.conftest import ProcessorProcess
from tests.helpers import eventually

pytestmark = pytest.mark.integration
PRIVATE, PUBLIC = chain.generate_keypair()
TENANTS = ("acme", "globex", "initech")


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    return settings.model_copy(update={"checkpoint_public_key": PUBLIC})


async def produce(settings: AuditSettings, n: int, prefix: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futures = []
        for i in range(n):
            event = AuditEvent(
                id=f"{prefix}-{i:06d}",
                tenant=TENANTS[i % len(TENANTS)],
                action="doc.edit",
                actor={"id": f"u{i % 17}"},
                targets=[{"type": "doc", "id": str(i % 101)}],
                metadata={"i": i, "ratio": i / 7},
            )
            futures.append(
                await producer.send(
                    settings.topic_events, encode_event(event), key=event.tenant.encode()
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def wait_count(store: AsyncCollection[dict[str, Any]], n: int, timeout: float) -> None:
    async def done() -> bool:
        return await store.count_documents({}) >= n

    await eventually(done, timeout=timeout, interval=0.5)
    assert await store.count_documents({}) == n


@pytest.mark.parametrize(
    "n",
    [
        pytest.param(3000, marks=pytest.mark.timeout(900)),
        pytest.param(50_000, marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
async def test_replay_reproduces_the_store_while_live_ingestion_continues(
    n: int,
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors(AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE)
    await produce(settings, n, "base")
    await wait_count(store, n, timeout=max(120.0, n / 50))
    # a correction and an erasure, through the log
    admin = auth("acme", "events:read events:write events:admin")
    fix = {"reason": "typo", "set": {"description": "fixed"}}
    assert (
        await client.put("/v1/events/base-000003?wait=true", json=fix, headers=admin)
    ).status_code == 200
    gone = await client.delete("/v1/events/base-000006?wait=true&reason=gdpr", headers=admin)
    assert gone.status_code == 204
    await wait_count(store, n + 2, timeout=60)
    count, before = await store_digest(store)

    # replay from scratch into a fresh collection, then swap; no live traffic
    first = await Replayer(settings, grace_seconds=1.0).run()
    assert first.swapped and first.ok, first
    assert (first.live_count, first.replay_count) == (n + 2, n + 2)
    print(
        f"\nreplay of {first.records} records: {first.rate:,.0f} events/s, "
        f"writers paused {first.fenced_seconds:.1f}s {first.fence_phases}"
    )
    assert await store_digest(store) == (count, before)

    if n > 10_000:  # the big run: a second replay changes nothing; live traffic is the small run's
        again = await Replayer(settings, grace_seconds=1.0).run()
        assert again.ok and await store_digest(store) == (count, before)
        return

    # again, while live ingestion goes on: 300 more events arrive during the replay
    live = asyncio.create_task(produce(settings, 300, "live"))
    second = await Replayer(settings, grace_seconds=1.0).run()
    await live
    assert second.swapped and all(r.ok for r in second.reports), second
    await wait_count(store, n + 2 + 300, timeout=120)
    seqs: dict[str, list[int]] = {}
    async for doc in store.find({}, {"tenant": 1, "seq": 1}).sort([("seq", 1)]):
        seqs.setdefault(doc["tenant"], []).append(doc["seq"])
    assert all(s == list(range(1, len(s) + 1)) for s in seqs.values())  # no gaps, no forks

    # and a third, quiet replay changes nothing at all
    settled = await store_digest(store)
    third = await Replayer(settings, grace_seconds=0.5).run()
    assert third.ok and await store_digest(store) == settled
    state = store.database[REPLAY_STATE_COLLECTION]
    fence = await state.find_one({"_id": "fence"})
    assert fence is not None and fence["until"] is None  # writers are not left fenced


async def test_replay_resumes_from_saved_positions(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors(AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE)
    await produce(settings, 500, "r")
    await wait_count(store, 500, timeout=120)
    expected = await store_digest(store)
    # a replay that stops after building part of the collection (as if it crashed)
    partial = await Replayer(settings, batch_size=100).run(swap=False)
    assert partial.records == 500
    state = store.database[REPLAY_STATE_COLLECTION]
    await state.update_one(
        {"_id": "replay"},
        {"$set": {"phase": "running", "positions": {str(p): 0 for p in range(4)}}},
    )
    resumed = await Replayer(settings).run()
    assert resumed.resumed and resumed.ok and resumed.duplicates == 500
    assert await store_digest(store) == expected


async def chain_of(store: AsyncCollection[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """Every stored event's (tenant, seq) → hash: what a replay must never lose."""
    return {
        (d["tenant"], d["seq"]): d["hash"]
        async for d in store.find({}, {"tenant": 1, "seq": 1, "hash": 1})
    }


async def copy_topic(settings: AuditSettings, to: str, keep: Callable[[int, int], bool]) -> int:
    """Copy the records of the events topic that ``keep(partition, offset)`` into ``to``.

    Keys, values and timestamps are kept, so the copies rebuild the same documents:
    a stand-in for a topic that lost part of its log (a restarted in-memory broker,
    finite retention).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    copied = 0
    try:
        parts = consumer.partitions_for_topic(settings.topic_events) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(settings.topic_events) or set()
        tps = [TopicPartition(settings.topic_events, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await true_end_offsets(consumer, tps)
        await consumer.seek_to_beginning(*tps)
        records = []
        while len(records) < sum(ends.values()):
            for messages in (await consumer.getmany(timeout_ms=1000)).values():
                records.extend(m for m in messages if m.offset < ends[m.partition])
        for m in sorted(records, key=lambda m: (m.partition, m.offset)):
            if keep(m.partition, m.offset):
                await producer.send_and_wait(
                    to, m.value, key=m.key, partition=m.partition, timestamp_ms=m.timestamp
                )
                copied += 1
    finally:
        await producer.stop()
        await consumer.stop()
    return copied


async def test_replay_never_swaps_in_a_store_that_lacks_stored_events(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    """The topic lost events the store holds (a restarted in-memory broker, a truncated
    log): replay refuses with one line, the live store keeps every event and hash, the
    rebuilt copy stays for inspection, live writers are not left fenced."""
    processors(AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(40):
            tenant = ("acme", "globex")[i % 2]
            event = AuditEvent(id=f"n-{i:03d}", tenant=tenant, action="doc.edit")
            await producer.send_and_wait(
                settings.topic_events, encode_event(event), key=tenant.encode()
            )
    finally:
        await producer.stop()
    await wait_count(store, 40, timeout=120)
    before = await chain_of(store)
    digest = await store_digest(store)
    database = store.database

    # the restarted broker: the topic is empty (a topic name the broker never saw)
    empty = settings.model_copy(update={"topic_events": f"{settings.topic_events}.restarted"})
    result = await Replayer(empty, grace_seconds=0.2).run()
    print(f"\n{result.refusal}")
    assert not result.swapped and not result.ok
    assert result.refusal is not None and "\n" not in result.refusal
    assert result.refusal.startswith(
        "replay refused: tenant acme has 20 stored events, the topic rebuilt 0;"
    ), result.refusal
    assert f"topic {empty.topic_events} does not exist" in result.refusal
    assert "globex" in result.refusal  # the other tenant is named too
    assert result.refusal.endswith("live store untouched, rebuilt copy kept in events_replay")
    assert await chain_of(store) == before and await store_digest(store) == digest
    assert "events_replay" in await database.list_collection_names()
    fence = await database[REPLAY_STATE_COLLECTION].find_one({"_id": "fence"})
    assert fence is None or fence["until"] is None

    # a topic that kept only the first half of every partition
    half = f"{settings.topic_events}.half"
    ends: dict[int, int] = {}

    def count(partition: int, offset: int) -> bool:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
        return False

    await copy_topic(settings, half, count)
    copied = await copy_topic(settings, half, lambda p, o: o < ends[p] // 2)
    assert 0 < copied < 40
    partial = await Replayer(
        settings.model_copy(update={"topic_events": half}), grace_seconds=0.2
    ).run()
    print(partial.refusal)
    assert not partial.swapped and partial.refusal is not None, partial
    assert partial.refusal.startswith("replay refused: tenant acme has 20 stored events"), (
        partial.refusal
    )
    assert await chain_of(store) == before and await store_digest(store) == digest
    assert f"(topic {half} starts at offset 0 of partition " in partial.refusal
    assert await database["events_replay"].count_documents({}) == copied

    # the topic that holds everything still swaps
    whole = await Replayer(settings, grace_seconds=0.2).run()
    assert whole.swapped and whole.ok and whole.refusal is None, whole
    assert await chain_of(store) == before


async def test_replay_from_the_archive_after_the_broker_forgot_everything(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    """Issue 16: events written while the archiver runs, then the topic's history
    restarts (deleted and recreated, as a restarted embedded broker starts at offset 0
    with only the new events). Replay = archive + tail: every event is still stored,
    the old documents digest-equal, the swap is accepted and the chains verify.
    Without the archive the same replay is refused (what was lost before issue 16)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from audit_events.topic_admin import ensure_topics
    from stream_processor.archive.archiver import Archiver
    from stream_processor.archive.verify import verify_archive

    settings = settings.model_copy(
        update={
            "archive_segment_seconds": 0.3,
            "archiver_group": f"{settings.processor_group}-archiver",
        }
    )
    worker = processors(AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE)
    stop = asyncio.Event()
    archiver = Archiver(settings)
    archiving = asyncio.create_task(archiver.run(stop))
    await produce(settings, 600, "old")
    await wait_count(store, 600, timeout=120)
    admin = auth("acme", "events:read events:write events:admin")
    fix = {"reason": "typo", "set": {"description": "fixed"}}
    put = await client.put("/v1/events/old-000003?wait=true", json=fix, headers=admin)
    assert put.status_code == 200
    await wait_count(store, 601, timeout=120)
    before = await chain_of(store)
    count, digest = await store_digest(store)

    async def archived_all() -> bool:
        return (
            sum(e.count for e in archiver.manifest.entries if e.topic == settings.topic_events)
            >= 601
        )

    await eventually(archived_all, timeout=60)
    stop.set()
    await archiving
    worker.kill()

    # the broker forgets: the topics start over, holding only what comes next
    kafka = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await kafka.start()
    try:
        await kafka.delete_topics([settings.topic_events, settings.topic_checkpoints])
    finally:
        await kafka.close()
    await asyncio.sleep(0.5)
    await ensure_topics(settings)
    await produce(settings, 30, "new")

    lost = await Replayer(settings, grace_seconds=0.2, archive=False).run()
    assert not lost.swapped and lost.refusal is not None  # the topic alone lacks 601 events
    assert await store_digest(store) == (count, digest)

    result = await Replayer(settings, grace_seconds=0.2).run()
    assert result.swapped and result.ok, result
    assert result.archived_records >= 601 and result.records == result.archived_records + 30
    assert (result.live_count, result.replay_count) == (601, 631)
    after = await chain_of(store)
    assert {k: v for k, v in after.items() if k in before} == before  # same seqs and hashes
    old_ids = [d["_id"] async for d in store.find({"id": {"$regex": "^old-"}}, {"_id": 1})]
    assert len(old_ids) == 600
    # the documents of the old events are exactly those the live pipeline stored
    kept = [d async for d in store.find({}) if (d["tenant"], d["seq"]) in before]
    subset = store.database["digest_subset"]
    await subset.insert_many(kept)
    assert await store_digest(subset) == (count, digest)
    assert all(r.ok for r in result.reports) and len(result.reports) == 3
    assert verify_archive(settings.archive_path()).ok
