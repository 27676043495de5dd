"""Trust throughput in one run: store insert ceiling, replay, verify (events/s).

``python bench/bench_trust.py [--events 50000]`` starts Tansu and SecantusDB on
free ports, produces N events (8 tenants) to a fresh topic, then measures:

1. the store's insert ceiling: ``insert_many`` of the same sealed documents,
   batches of 1000, same indexes (incl. the unique chain index), same write
   concern (majority, journaled);
2. ``auditstream replay`` from scratch: the rebuild (topic → decode → chain →
   write, up to the swap's fence) and the whole run (plus fence, swap and the
   verification of the swapped-in store);
3. verification of every tenant chain (recompute content hashes, check links).

Writes ``bench/results/trust.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient, IndexModel
from pymongo.write_concern import WriteConcern

from audit_events.chain import GENESIS, seal
from audit_events.codec import encode_event, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION
from auditstream.embedded import kafka_server, mongo_server, stop_all
from query_api.verify import verify_tenant
from stream_processor.chain import ensure_chain_index
from stream_processor.replay import Replayer

RESULTS = Path(__file__).parent / "results"


def make_events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            id=f"b-{i:08d}",
            tenant=f"tenant{i % 8}",
            action="invoice.update",
            actor={"id": f"user{i % 97}", "name": "Some User"},
            targets=[{"type": "invoice", "id": str(i % 1009)}],
            description=f"updated invoice {i % 1009}",
            changes={"total": {"old": i, "new": i + 1}},
            context={"ip": "10.0.0.1", "request_id": f"req-{i}"},
            metadata={"amount": i * 1.5, "currency": "EUR"},
        )
        for i in range(n)
    ]


async def produce(bootstrap: str, topic: str, events: list[AuditEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(0, len(events), 5000):
            futures = [
                await producer.send(topic, encode_event(e), key=e.tenant.encode())
                for e in events[i : i + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def ceiling(mongo_uri: str, events: list[AuditEvent]) -> float:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
    coll = client["ceiling"]["events"].with_options(
        write_concern=WriteConcern(w="majority", j=True)
    )
    await coll.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
    await ensure_chain_index(coll)
    heads: dict[str, tuple[int, str]] = {}
    docs = []
    for event in events:
        doc = event_to_document(event, event.occurred_at)
        seq, prev = heads.get(event.tenant, (0, GENESIS))
        heads[event.tenant] = (seq + 1, seal(doc, seq + 1, prev))
        docs.append(doc)
    started = time.perf_counter()
    for i in range(0, len(docs), 1000):
        await coll.insert_many(docs[i : i + 1000], ordered=True)
    rate = len(docs) / (time.perf_counter() - started)
    await client.close()
    return rate


async def verify_all(settings: AuditSettings) -> tuple[float, int, bool]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    events = client[settings.mongo_db][EVENTS_COLLECTION]
    started = time.perf_counter()
    checked, ok = 0, True
    for tenant in sorted(await events.distinct("tenant")):
        report = await verify_tenant(events, tenant, [], None)
        checked += report.checked
        ok = ok and report.ok
    rate = checked / (time.perf_counter() - started)
    await client.close()
    return rate, checked, ok


async def main(n: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    servers = [kafka_server(workdir), mongo_server(workdir)]
    try:
        for server in servers:
            server.start()
        settings = AuditSettings(
            kafka_bootstrap=servers[0].url,
            mongo_uri=servers[1].url,
            mongo_db="bench",
            topic_events="bench.events",
            kafka_partitions=8,
        )
        events = make_events(n)
        t = time.perf_counter()
        await produce(settings.kafka_bootstrap or "", settings.topic_events, events)
        print(f"produced {n} events in {time.perf_counter() - t:.1f}s", flush=True)
        store_rate = await ceiling(settings.mongo_uri or "", events)
        print(f"store insert ceiling: {store_rate:,.0f} events/s", flush=True)
        result = await Replayer(settings, grace_seconds=0.5).run()
        rebuild_rate = result.records / result.rebuild_seconds
        print(
            f"replay: rebuild {rebuild_rate:,.0f} events/s, whole run {result.rate:,.0f} events/s"
            f" ({result.records} records in {result.seconds:.1f} s, incl. swap and verify)",
            flush=True,
        )
        verify_rate, checked, ok = await verify_all(settings)
        print(f"verify: {verify_rate:,.0f} events/s ({checked} events, ok={ok})", flush=True)
        out = {
            "events": n,
            "store_insert_ceiling_events_per_s": round(store_rate),
            "replay_rebuild_events_per_s": round(rebuild_rate),
            "replay_rebuild_vs_ceiling": round(rebuild_rate / store_rate, 2),
            "replay_whole_run_events_per_s": round(result.rate),
            "replay_whole_run_seconds": round(result.seconds, 1),
            "replay_ok": result.ok,
            "verify_events_per_s": round(verify_rate),
            "verify_ok": ok and checked == n,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "trust.json").write_text(json.dumps(out, indent=2) + "\n")
        return out
    finally:
        stop_all(servers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    print(json.dumps(asyncio.run(main(parser.parse_args().events)), indent=2))
