"""Nothing lost, nothing duplicated: crashes, a store outage, poison pills, scale-out.

Real Tansu, SecantusDB and redis-server; workers are real ``auditstream processor``
child processes. Each test prints one ``FIGURES {...}`` line (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from audit_events.topic_admin import create_missing
from audit_events.topics import topic_specs
from auditstream.embedded import free_port, mongo_server
from tests.conftest import Backends, ProcessorProcess
from tests.helpers import event_record, eventually, scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

Spawn = Callable[..., ProcessorProcess]


# --- helpers ----------------------------------------------------------------


class Kafka:
    """Produce, inspect committed offsets / high watermarks, read the DLQ."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap or ""
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, max_batch_size=262144
        )
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        # Same group id, but never subscribes: only fetches the group's offsets.
        self.offsets = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=settings.processor_group,
            enable_auto_commit=False,
        )
        self.tps = [
            TopicPartition(settings.topic_events, p) for p in range(settings.kafka_partitions)
        ]

    async def __aenter__(self) -> Kafka:
        await self.admin.start()
        s = self.settings
        await create_missing(self.admin, topic_specs(s))  # as kafka-init would
        await self.producer.start()
        await self.probe.start()
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.probe.stop()
        await self.offsets.stop()
        await self.admin.close()

    async def send(self, values: Iterable[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
        """Send (key, value) pairs; returns their (partition, offset) once acknowledged."""
        futures = [
            await self.producer.send(self.settings.topic_events, value, key=key)
            for key, value in values
        ]
        return [(m.partition, m.offset) for m in await asyncio.gather(*futures)]

    async def committed(self) -> dict[int, int]:
        """The group's committed offsets (read without joining the group)."""
        out: dict[int, int] = {}
        for tp in self.tps:
            offset = await self.offsets.committed(tp)
            if offset is not None and offset >= 0:
                out[tp.partition] = offset
        return out

    async def high_watermarks(self) -> dict[int, int]:
        ends = await self.probe.end_offsets(self.tps)
        return {tp.partition: off for tp, off in ends.items()}

    async def fully_committed(self) -> bool:
        high = {p: o for p, o in (await self.high_watermarks()).items() if o > 0}
        committed = await self.committed()
        return all(committed.get(p, 0) >= o for p, o in high.items())

    async def dead_letters(self, expected: int, timeout: float = 120.0) -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            self.settings.topic_dlq, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < expected and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    out += [orjson.loads(r.value) for r in records if r.value is not None]
            await asyncio.sleep(1.0)  # anything beyond `expected` would show up now
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [orjson.loads(r.value) for r in records if r.value is not None]
        finally:
            await consumer.stop()
        return out


def events(prefix: str, n: int, tenants: int = 16) -> list[tuple[bytes, bytes]]:
    """``n`` Kafka records ``{prefix}-000000`` … spread over ``tenants`` tenants."""
    return [event_record(i, f"tenant-{i % tenants}", id=f"{prefix}-{i:06d}") for i in range(n)]


async def stored_ids(store: AsyncCollection[dict[str, Any]]) -> list[str]:
    """The stored events' client ids (``_id`` is tenant/id)."""
    return [d["id"] async for d in store.find({}, {"id": 1})]


def figures(test: str, **values: Any) -> None:
    print("FIGURES", json.dumps({"test": test, **values}))


async def settle(kafka: Kafka, store: AsyncCollection[dict[str, Any]], n: int) -> None:
    """Wait until ``n`` documents are stored and every offset is committed."""

    async def done() -> bool:
        # Offsets first: SecantusDB counts by scanning, and polling a scan steals the
        # processor's server time. Committed offsets imply stored events (commit last).
        return await kafka.fully_committed() and await store.count_documents({}) >= n

    await eventually(done, max(400.0, n / 25), 0.5, what=f"{n} events stored and committed")


async def committed_total(kafka: Kafka) -> int:
    """Events the group has committed (each one stored first): a cheap progress probe."""
    return sum((await kafka.committed()).values())


def assert_exact(ids: list[str], produced: list[str]) -> tuple[int, int]:
    lost = len(set(produced) - set(ids))
    extra = len(ids) - len(set(ids)) + len(set(ids) - set(produced))
    assert (lost, extra) == (0, 0)
    assert sorted(ids) == sorted(produced)
    return lost, extra


# --- tests ------------------------------------------------------------------


KILL_BATCH = 100  # events per batch of a worker that kills itself before a commit


@pytest.mark.parametrize(
    "total",
    [
        # The default run keeps six kills over fewer events: SecantusDB stores a few
        # hundred chained events/s on two shared cores, so 50,000 take many minutes.
        10_000,
        pytest.param(50_000, marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
    ],
)
async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    settings: AuditSettings,
    processors: Spawn,
    store: AsyncCollection[dict[str, Any]],
    unique: str,
    total: int,
) -> None:
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    chunk = total // 10
    batch = events(f"crash-{unique}", total)
    produced = [orjson.loads(v)["id"] for _, v in batch]
    kills: list[str] = []
    async with Kafka(settings) as kafka:

        async def produce() -> None:
            for start in range(0, total, chunk):  # mid-stream: spread over the kills
                await kafka.send(batch[start : start + chunk])
                await asyncio.sleep(rng.uniform(0.5, 2.0))

        producing = asyncio.create_task(produce())
        for round_ in range(6):
            before = await committed_total(kafka)
            if round_ % 2:
                # SIGKILL between the write and the commit of its n-th stored batch.
                # It gets a backlog of its own (small batches), so its n-th batch
                # comes even when the workers before it stored all produced so far.
                n = rng.randint(1, 4)
                extra = events(f"crash-{unique}-r{round_}", n * KILL_BATCH + 1)
                produced += [orjson.loads(v)["id"] for _, v in extra]
                await kafka.send(extra)
                worker = processors(
                    AUDITSTREAM_TEST_KILL_BEFORE_COMMIT=str(n),
                    AUDITSTREAM_BATCH_MAX_EVENTS=str(KILL_BATCH),
                )
                assert await worker.exit_code(300) == -9
                kills.append(f"after write, before commit of stored batch {n}")
            else:
                worker = processors()

                async def progressed(before: int = before) -> bool:
                    return await committed_total(kafka) > before

                await eventually(progressed, 300, 0.5, what="the restarted worker stores events")
                pause = rng.uniform(0.0, 2.0)
                await asyncio.sleep(pause)
                worker.kill()
                kills.append(f"random, {pause:.2f}s after first progress")
        await producing
        port = free_port()
        processors(AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port))
        await settle(kafka, store, len(produced))
        metrics = scrape(port)
    ids = await stored_ids(store)
    lost, dups = assert_exact(ids, produced)
    assert len(kills) == 6
    figures(
        "crash",
        seed=seed,
        events=len(produced),
        kills=len(kills),
        kill_moments=kills,
        lost=lost,
        duplicates=dups,
        dlq=0,
        redelivered_skipped_by_last_worker=metrics.get("auditstream_events_duplicate_total"),
    )


async def test_store_outage_delays_but_loses_nothing_and_commits_nothing_early(
    backends: Backends,
    settings: AuditSettings,
    processors: Spawn,
    store: AsyncCollection[dict[str, Any]],
    unique: str,
    tmp_path: Path,
) -> None:
    mongo = backends.servers.get("mongodb")
    if mongo is None:  # pragma: no cover - containers backend
        pytest.skip("needs the embedded MongoDB server to stop and start it")
    total, outage = 12_000, 22.0
    batch = events(f"outage-{unique}", total)
    produced = [orjson.loads(v)["id"] for _, v in batch]
    samples: list[dict[int, int]] = []
    async with Kafka(settings) as kafka:
        positions: list[tuple[int, int]] = []

        async def produce() -> None:  # ~40 s of steady traffic
            for start in range(0, total, 300):
                positions.extend(await kafka.send(batch[start : start + 300]))
                await asyncio.sleep(1.0)

        producing = asyncio.create_task(produce())
        worker = processors()

        async def midstream() -> bool:
            return await committed_total(kafka) >= 1_000

        await eventually(midstream, 300, 0.5, what="first events stored")
        mongo.stop()
        stopped = time.monotonic()
        storage = Path(mongo.argv[mongo.argv.index("--storage-path") + 1])
        snapshot = tmp_path / "snapshot"
        shutil.copytree(storage, snapshot)  # what was durably stored when it went down
        while time.monotonic() - stopped < outage:
            samples.append(await kafka.committed())
            await asyncio.sleep(0.5)
        mongo.start()
        await producing
        await settle(kafka, store, total)
        assert worker.proc is not None and worker.proc.poll() is None  # retried, never gave up
    ids = await stored_ids(store)
    lost, dups = assert_exact(ids, produced)

    # Every offset committed during the outage covers only events stored before it.
    copy = mongo_server(tmp_path, storage=str(snapshot))
    copy.start()
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(copy.url)
        coll = client[settings.mongo_db][EVENTS_COLLECTION]
        before_outage = {d["id"] async for d in coll.find({}, {"id": 1})}
        await client.close()
    finally:
        copy.stop()
    at = {pos: eid for pos, eid in zip(positions, produced, strict=True)}
    covered = 0
    for sample in samples:
        for (partition, offset), eid in at.items():
            if offset < sample.get(partition, 0):
                assert eid in before_outage, f"offset {partition}/{offset} committed unstored"
                covered += 1
    assert samples and covered > 0
    figures(
        "outage",
        events=total,
        outage_s=outage,
        stored_before_outage=len(before_outage),
        commit_samples_during_outage=len(samples),
        lost=lost,
        duplicates=dups,
        dlq=0,
    )


def poison_pills(unique: str) -> list[tuple[bytes, str]]:
    deep: Any = 1
    for _ in range(12):
        deep = {"d": deep}

    def ev(**fields: Any) -> bytes:
        body = {"id": f"bad-{unique}-{random.random()}", "tenant": "acme", "action": "a.b"}
        return orjson.dumps({**body, **fields})

    return [
        (orjson.dumps({"tenant": "acme", "action": "a.b", "description": "x" * 5000}), "oversized"),
        (b'{"tenant": "acme", "action": "\xc3\x28"}', "not UTF-8"),
        (b"\xff\xfe\xfd", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"", "not JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (ev(tenant=42), "invalid event: tenant: Input should be a valid string"),
        (ev(occurred_at="soon"), "invalid event: occurred_at: Input should be a valid datetime"),
        (orjson.dumps({"action": "a.b"}), "invalid event: tenant: Field required"),
        (orjson.dumps({"tenant": "acme"}), "invalid event: action: Field required"),
        (ev(metadata=deep), "invalid event: metadata: Value error, metadata nested deeper than 8"),
        (ev(metadata={"k": "v" * 700}), "invalid event: metadata: Value error, metadata is"),
        (ev(metadata={"a.b": 1}), "invalid event: metadata: Value error, key 'a.b'"),
        (ev(bogus=True), "invalid event: bogus: Extra inputs are not permitted"),
    ]


async def test_poison_pills_go_to_the_dlq_and_never_stall_the_worker(
    settings: AuditSettings,
    processors: Spawn,
    store: AsyncCollection[dict[str, Any]],
    unique: str,
) -> None:
    good = events(f"good-{unique}", 3_000, tenants=4)
    pills = poison_pills(unique) * 3
    rng = random.Random(7)
    mixed: list[tuple[bytes, bytes, str | None]] = [(k, v, None) for k, v in good]
    for value, reason in pills:
        mixed.insert(rng.randrange(len(mixed) + 1), (b"acme", value, reason))
    processors(
        AUDITSTREAM_MAX_EVENT_BYTES="4096",
        AUDITSTREAM_MAX_METADATA_BYTES="512",
        AUDITSTREAM_BATCH_MAX_EVENTS="200",
    )
    async with Kafka(settings) as kafka:
        positions = await kafka.send((k, v) for k, v, _ in mixed)
        started = time.monotonic()
        await settle(kafka, store, len(good))
        elapsed = time.monotonic() - started
        dead = await kafka.dead_letters(len(pills))
    expected = {pos: (v, why) for pos, (_, v, why) in zip(positions, mixed, strict=True) if why}
    got = {(d["source"]["partition"], d["source"]["offset"]): d for d in dead}
    assert len(dead) == len(pills) and set(got) == set(expected)
    for pos, (value, why) in expected.items():
        letter = got[pos]
        assert letter["reason"].startswith(why), (letter["reason"], why)
        assert base64.b64decode(letter["original"]) == value and not letter["original_truncated"]
        assert letter["source"]["topic"] == settings.topic_events
        assert letter["dead_lettered_at"] and letter["source"]["timestamp_ms"] > 0
    ids = await stored_ids(store)
    lost, dups = assert_exact(ids, [orjson.loads(v)["id"] for _, v in good])
    figures(
        "poison",
        events=len(mixed),
        valid=len(good),
        poison=len(pills),
        kinds=len(poison_pills(unique)),
        dlq=len(dead),
        lost=lost,
        duplicates=dups,
        kills=0,
        seconds_to_drain=round(elapsed, 1),
    )


@pytest.mark.parametrize("total", [8_000, pytest.param(20_000, marks=pytest.mark.slow)])
async def test_two_workers_one_sigkilled_mid_stream_exact_id_set(
    settings: AuditSettings,
    processors: Spawn,
    store: AsyncCollection[dict[str, Any]],
    unique: str,
    total: int,
) -> None:
    batch = events(f"pair-{unique}", total)
    produced = [orjson.loads(v)["id"] for _, v in batch]
    first, _second = processors(), processors()
    async with Kafka(settings) as kafka:

        async def produce() -> None:
            for start in range(0, total, total // 10):
                await kafka.send(batch[start : start + total // 10])
                await asyncio.sleep(1.0)

        producing = asyncio.create_task(produce())

        async def midstream() -> bool:
            return await committed_total(kafka) >= total // 5

        await eventually(midstream, 300, 0.5, what="first events stored")
        first.kill()
        killed_at = await store.count_documents({})
        await producing
        await settle(kafka, store, total)
    ids = await stored_ids(store)
    lost, dups = assert_exact(ids, produced)
    figures(
        "two_workers",
        events=total,
        workers=2,
        kills=1,
        stored_at_kill=killed_at,
        lost=lost,
        duplicates=dups,
        dlq=0,
    )


async def test_worker_that_cannot_open_the_store_exits_non_zero_instead_of_idling(
    processors: Spawn,
) -> None:
    # A crashed agent would keep a live worker holding partitions and doing nothing.
    worker = processors(
        AUDITSTREAM_MONGO_URI="mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=1000",
        AUDITSTREAM_WRITE_RETRY_SECONDS="3",
    )
    assert await worker.exit_code(120) == 75
