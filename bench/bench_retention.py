"""The purge rate of per-tenant retention (issue 16, "Measure": purge rate at 100,000 events).

One tenant, N events received 3 days ago plus 100 recent ones, a 1-day policy:
the events go to the topic (record time in the past), the archiver archives
them, the store is filled with the processor's own decode + seal (as the live
pipeline stores them), then one ``purge_tenant`` pass is timed: it reads and
checks the stored prefix, verifies the archive and finds every candidate in
it (gzip segments, SHA-256), writes the stubs and the marker and deletes.

    .venv/bin/python bench/bench_retention.py [--events 100000]

Writes bench/results/retention.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from common import write_results
from pymongo import AsyncMongoClient
from stack import Stack

from audit_events.chain import GENESIS, seal
from audit_events.schema import DEFAULT_LIMITS
from audit_events.storage import EVENTS_COLLECTION
from audit_events.topic_admin import ensure_topics
from stream_processor.archive.archiver import Archiver
from stream_processor.archive.storage import DirectoryStorage
from stream_processor.decode import decode
from stream_processor.records import Record
from stream_processor.retention import purge_tenant

DAY_MS = 86_400_000


def value(i: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"ev-{i:08d}",
            "tenant": "acme",
            "action": "invoice.update",
            "actor": {"id": f"u-{i % 97}", "type": "user"},
            "targets": [{"type": "invoice", "id": f"inv-{i % 1000}"}],
            "metadata": {"n": i, "plan": "pro"},
        }
    )


async def main(n: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    stack = Stack(workdir)
    stack.start()
    try:
        settings = stack.settings(
            "retention",
            archive_dir=str(workdir / "archive"),
            archiver_group="bench-retention-archiver",
            archiver_metrics_port=0,
            archive_segment_seconds=1.0,
        )
        await ensure_topics(settings)
        now_ms = int(time.time() * 1000)
        times = [now_ms - 3 * DAY_MS + i for i in range(n)] + [now_ms + i for i in range(100)]
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5
        )
        await producer.start()
        t0 = time.perf_counter()
        futures = [
            await producer.send(settings.topic_events, value(i), key=b"acme", timestamp_ms=ts)
            for i, ts in enumerate(times)
        ]
        sent = await asyncio.gather(*futures)
        await producer.stop()
        produce_s = time.perf_counter() - t0
        partition = sent[0].partition
        # archive them
        archiver, stop = Archiver(settings), asyncio.Event()
        task = asyncio.create_task(archiver.run(stop))
        t0 = time.perf_counter()
        while sum(e.count for e in archiver.manifest.entries) < len(times):
            assert not task.done(), task
            await asyncio.sleep(0.5)
        archive_s = time.perf_counter() - t0
        stop.set()
        await task
        # the store, as the pipeline writes it
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True
        )
        db = client[settings.mongo_db]
        docs, prev = [], GENESIS
        for i, (meta, ts) in enumerate(zip(sent, times, strict=True)):
            rec = Record(settings.topic_events, partition, meta.offset, ts, b"acme", value(i))
            doc = decode(rec, DEFAULT_LIMITS, 1 << 20)
            assert isinstance(doc, dict), doc
            prev = seal(doc, i + 1, prev, content_hash=doc["content_hash"])
            docs.append(doc)
        for i in range(0, len(docs), 5000):
            await db[EVENTS_COLLECTION].insert_many(docs[i : i + 5000], ordered=True)
        await db[EVENTS_COLLECTION].create_index([("tenant", 1), ("seq", 1)], unique=True)
        # the timed purge
        t0 = time.perf_counter()
        result = await purge_tenant(
            db,
            DirectoryStorage(settings.archive_path()),
            settings.topic_events,
            "acme",
            1,
            now=datetime.now(UTC),
        )
        purge_s = time.perf_counter() - t0
        left = await db[EVENTS_COLLECTION].count_documents({"tenant": "acme"})
        await client.close()
        assert result.purged == n and left == 100, (result, left)
        return {
            "events_purged": result.purged,
            "purge_seconds": round(purge_s, 2),
            "purge_events_per_second": round(result.purged / purge_s),
            "phases_seconds": result.seconds,
            "segments": len(archiver.manifest.entries),
            "produce_seconds": round(produce_s, 2),
            "archive_seconds": round(archive_s, 2),
            "store": "SecantusDB (embedded dev stack)",
        }
    finally:
        stack.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    write_results("retention.json", asyncio.run(main(args.events)))
