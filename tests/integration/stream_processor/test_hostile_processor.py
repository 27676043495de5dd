"""Issue 14 at the processor: no record stops the pipeline; a frozen store is an outage.

Real Tansu, SecantusDB and redis-server; workers are real ``auditstream processor``
child processes. The frozen-store test SIGSTOPs a SecantusDB of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import Server
from tests.helpers import eventually, exited, freeze, nested
from tests.integration.stream_processor.test_processor_resilience import Kafka, Spawn, events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MIB = 1024 * 1024


def hostile(unique: str) -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, expected reason prefix) of records that once stopped a worker."""

    def ev(**fields: Any) -> bytes:
        body = {"id": f"bad-{unique}-{len(fields)}", "tenant": "tenant-0", **fields}
        return json.dumps(body).encode()  # json: integers beyond 64 bits too

    return [
        (b"tenant-0", None, "null value"),  # a tombstone: TypeError in decode
        (b"", None, "null value"),  # an empty key too
        (b"tenant-1", ev(action="a.b", occurred_at="0001-01-01T00:00:00+14:00"), "invalid event"),
        (b"tenant-1", ev(action="a.b", occurred_at="9999-12-31T23:59:59-14:00"), "invalid event"),
        (b"tenant-0", b"a" * MIB, "oversized"),  # its DLQ copy exceeded the broker's limit
        (b"tenant-0", b"\x01" * (180 * 1024), "not JSON"),  # 1 MiB+ once JSON-escaped
        (b"tenant-1", ev(action="a.b", changes={"f": {"old": nested(199)}}), "not JSON"),
        (b"k" * 5000, ev(action="a.b", metadata={"n": 2**64}), "invalid event"),
    ]


async def stored_ids(store: AsyncCollection[dict[str, Any]]) -> set[str]:
    return {d.get("id", d["_id"]) async for d in store.find({}, {"id": 1})}


async def test_a_null_record_then_good_events_for_two_tenants_all_stored_none_stalls(
    settings: AuditSettings,
    processors: Spawn,
    store: AsyncCollection[dict[str, Any]],
    unique: str,
) -> None:
    bad = hostile(unique)
    good = events(f"good-{unique}", 1000, tenants=2)
    worker = processors(AUDITSTREAM_BATCH_MAX_EVENTS="200")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", max_request_size=4 * MIB
    )
    async with Kafka(settings) as kafka:
        await producer.start()
        try:
            sent = []
            for key, value, _ in bad:  # first: everything after them waited on them
                meta = await producer.send_and_wait(settings.topic_events, value, key=key)
                sent.append((meta.partition, meta.offset))
        finally:
            await producer.stop()
        await kafka.send(good)
        started = time.monotonic()
        wanted = {orjson.loads(v)["id"] for _, v in good}

        async def all_stored() -> bool:
            return await kafka.fully_committed() and wanted <= await stored_ids(store)

        await eventually(
            all_stored, 300, 0.5, what="1,000 good events stored", abort=exited(worker.proc)
        )
        elapsed = time.monotonic() - started
        dead = await kafka.dead_letters(len(bad), timeout=60)
    assert worker.proc is not None and worker.proc.poll() is None
    assert await stored_ids(store) == wanted  # and nothing hostile
    got = {(d["source"]["partition"], d["source"]["offset"]): d for d in dead}
    assert len(dead) == len(bad) and set(got) == set(sent)
    for pos, (key, value, why) in zip(sent, bad, strict=True):
        letter = got[pos]
        assert letter["reason"].startswith(why), (letter["reason"], why)
        assert len(orjson.dumps(letter)) <= settings.dlq_max_record_bytes
        if value is None:
            assert letter["original"] is None
            continue
        assert letter["original_size"] == len(value)
        assert letter["original_sha256"] == hashlib.sha256(value).hexdigest()
        kept = base64.b64decode(letter["original"])
        assert value.startswith(kept) and (kept == value) is not letter["original_truncated"]
        if key is not None:
            assert letter["key"]["size"] == len(key)
    print(f"FIGURES crash_loop good=1000 hostile={len(bad)} seconds={elapsed:.1f}")


async def test_a_frozen_store_fails_writes_so_the_retry_limit_exits_without_commit(
    settings: AuditSettings, processors: Spawn, own_mongo: Server, unique: str
) -> None:
    worker = processors(
        AUDITSTREAM_MONGO_URI=own_mongo.url,
        AUDITSTREAM_MONGO_TIMEOUT_MS="1000",
        AUDITSTREAM_WRITE_RETRY_SECONDS="5",
    )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_mongo.url, timeoutMS=5000)
    own_store = client[settings.mongo_db][EVENTS_COLLECTION]
    try:
        async with Kafka(settings) as kafka:
            first = events(f"first-{unique}", 50, tenants=2)
            await kafka.send(first)

            async def first_stored() -> bool:
                return await kafka.fully_committed() and len(await stored_ids(own_store)) == 50

            await eventually(
                first_stored, 180, 0.5, what="first 50 stored", abort=exited(worker.proc)
            )
            committed = sum((await kafka.committed()).values())
            freeze(own_mongo, True)
            frozen_at = time.monotonic()
            await kafka.send(events(f"second-{unique}", 50, tenants=2))
            # The write retry limit (5 s) decides, each write bounded by the 1 s store
            # timeout. Before: no timeout; the insert hung until PyMongo's monitor
            # dropped the pool (54 s here; with the default 300 s limit, minutes).
            code = await worker.exit_code(30)
            exited_after = time.monotonic() - frozen_at
            assert code == 75
            assert sum((await kafka.committed()).values()) == committed  # nothing early
    finally:
        freeze(own_mongo, False)
        await client.close()
    print(f"FIGURES frozen_store exit={code} seconds_to_exit={exited_after:.1f}")
