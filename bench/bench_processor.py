"""Processor ingestion rate vs. the store's ceiling, in one run on the embedded stack.

    .venv/bin/python bench/bench_processor.py [--events 40000] [--batch 1000] [--profile]

1. Starts Tansu, SecantusDB and redis-server on free ports (temporary data dir).
2. Ceiling: ``insert_many`` of the very documents the processor would store,
   ``--batch`` per call, ``ordered=False``, write concern majority + journaled,
   into a fresh collection with the same indexes on the same MongoDB.
3. Worker: pre-produces the same events to a 4-partition topic, starts one
   ``auditstream processor`` and measures the steady-state rate: documents
   stored between 10 % and 90 % of the total, divided by the time between.
   ``--profile`` runs the worker under pyinstrument and writes the report to
   ``bench/results/processor-profile.txt``.

Prints one JSON object; not a test (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import kafka_server, mongo_server, redis_server, stop_all
from stream_processor.store import ensure_indexes

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 4


def make_events(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        body = {
            "id": f"bench-{i:08d}",
            "tenant": f"tenant-{i % 32}",
            "action": "invoice.update",
            "crud": "u",
            "actor": {"id": f"user-{i % 97}", "type": "user", "name": "Alice Example"},
            "targets": [{"type": "invoice", "id": f"inv-{i % 1000}"}],
            "changes": {"total": {"old": i, "new": i + 1}},
            "context": {"ip": "10.0.0.1", "request_id": f"req-{i}"},
            "source": {"service": "billing", "version": "1.4.2"},
            "description": "invoice total updated",
            "metadata": {"plan": "pro", "seats": i % 50, "tags": ["a", "b"]},
        }
        out.append(orjson.dumps(body))
    return out


async def ceiling(uri: str, values: list[bytes], batch: int) -> dict[str, float]:
    now = datetime.now(UTC)
    docs = [event_to_document(AuditEvent.model_validate_json(v), now) for v in values]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    coll = client["bench_ceiling"][EVENTS_COLLECTION].with_options(
        write_concern=WriteConcern(w="majority", j=True)
    )
    await coll.drop()
    await ensure_indexes(coll)
    started = time.perf_counter()
    for i in range(0, len(docs), batch):
        await coll.insert_many(docs[i : i + batch], ordered=False)
    elapsed = time.perf_counter() - started
    await client.close()
    return {"docs": len(docs), "seconds": round(elapsed, 2), "rate": round(len(docs) / elapsed)}


async def produce(settings: AuditSettings, values: list[bytes]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(t, PARTITIONS, 1) for t in (settings.topic_events, settings.topic_dlq)]
    )
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=10
    )
    await producer.start()
    try:
        for i in range(0, len(values), 5000):
            futures = [
                await producer.send(settings.topic_events, v, key=f"tenant-{j % 32}".encode())
                for j, v in enumerate(values[i : i + 5000], start=i)
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


async def worker_rate(settings: AuditSettings, total: int, profile: bool) -> dict[str, Any]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")},
        **settings_env(settings),
    }
    argv = [sys.executable, "-m", "auditstream", "processor", "--loglevel", "warn"]
    report = RESULTS / "processor-profile.txt"
    if profile:
        RESULTS.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "pyinstrument", "-o", str(report), "-m", "auditstream"]
        argv += ["processor", "--loglevel", "warn"]
    proc = start(argv, env, Path(settings.data_dir) / "worker.log")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = client[settings.mongo_db][EVENTS_COLLECTION]
    marks: dict[str, tuple[float, int]] = {}
    started = time.monotonic()
    try:
        while True:
            count = await coll.estimated_document_count()
            now = time.monotonic()
            if "low" not in marks and count >= total * 0.1:
                marks["low"] = (now, count)
            if "high" not in marks and count >= total * 0.9:
                marks["high"] = (now, count)
            if count >= total:
                break
            if now - started > 900 or proc.poll() is not None:
                raise RuntimeError(f"worker did not finish (count {count}, exit {proc.poll()})")
            await asyncio.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGINT if profile else signal.SIGTERM)
        proc.wait(60)
        await client.close()
    (t0, c0), (t1, c1) = marks["low"], marks["high"]
    return {
        "docs": total,
        "steady_docs": c1 - c0,
        "steady_seconds": round(t1 - t0, 2),
        "rate": round((c1 - c0) / (t1 - t0)),
        "profile": str(report) if profile else None,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-processor-"))
    servers = [kafka_server(workdir), mongo_server(workdir), redis_server(workdir)]
    for server in servers:
        server.start()
    try:
        settings = AuditSettings(
            kafka_bootstrap=servers[0].url,
            mongo_uri=servers[1].url,
            redis_url=servers[2].url,
            topic_events="bench.events",
            topic_dlq="bench.events.dlq",
            mongo_db="bench_worker",
            processor_group="bench-processor",
            processor_metrics_port=0,
            kafka_partitions=PARTITIONS,
            batch_max_events=args.batch,
            data_dir=str(workdir / "data"),
        )
        await asyncio.to_thread(Path(settings.data_dir).mkdir, parents=True)
        values = make_events(args.events)
        store = await ceiling(servers[1].url, values, args.batch)
        await produce(settings, values)
        worker = await worker_rate(settings, args.events, args.profile)
        return {
            "events": args.events,
            "batch_max_events": args.batch,
            "ceiling_insert_many": store,
            "worker": worker,
            "ratio": round(worker["rate"] / store["rate"], 2),
        }
    finally:
        stop_all(servers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
