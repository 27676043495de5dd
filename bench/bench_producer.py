"""Producer throughput against the embedded Tansu broker: acknowledged events per second.

    .venv/bin/python bench/bench_producer.py [--count 50000] [--tenants 50]

Starts its own Tansu on a free port, pre-generates realistic events
(producers.loadgen), then for each scenario publishes them to a fresh topic and
measures from the first emit until every event is acknowledged (acks=all). Prints a
Markdown table. A benchmark script, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit_events.codec import encode_event
from audit_events.schema import AuditEvent
from auditstream.embedded import kafka_server
from producers import AuditProducer, BufferFull, ProducerConfig
from producers.loadgen import generate_events


async def fire_and_forget(producer: AuditProducer, events: list[AuditEvent]) -> None:
    for event in events:
        while True:
            try:
                producer.emit_nowait(event)
                break
            except BufferFull:
                await asyncio.sleep(0.001)
    await producer.flush()


async def awaited(producer: AuditProducer, events: list[AuditEvent], concurrency: int) -> None:
    queue = iter(events)

    async def worker() -> None:
        for event in queue:
            await producer.emit(event)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def batches(producer: AuditProducer, events: list[AuditEvent], size: int) -> None:
    for i in range(0, len(events), size):
        await producer.emit_batch(events[i : i + size])


async def scenario(
    name: str, bootstrap: str, events: list[AuditEvent], mode: str, **cfg: object
) -> dict[str, object]:
    config = ProducerConfig(
        bootstrap=bootstrap,
        topic=f"bench.{uuid.uuid4().hex[:8]}",
        partitions=8,
        **cfg,  # type: ignore[arg-type]
    )
    async with AuditProducer(config) as producer:
        started = time.perf_counter()
        if mode == "nowait":
            await fire_and_forget(producer, events)
        elif mode.startswith("emit"):
            await awaited(producer, events, int(mode.removeprefix("emit")))
        else:
            await batches(producer, events, int(mode.removeprefix("batch")))
        seconds = time.perf_counter() - started
        acked = producer.stats().acknowledged
    return {"scenario": name, "events": len(events), "acked": acked, "seconds": seconds}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=50)
    args = parser.parse_args()

    events = list(generate_events(args.count, args.tenants, seed=42))
    size = sum(len(encode_event(e)) for e in events) / len(events)
    server = kafka_server(Path(tempfile.mkdtemp(prefix="bench-producer-")))
    server.start()
    try:
        plans: list[tuple[str, list[AuditEvent], str, dict[str, object]]] = [
            ("emit_nowait, gzip, linger 5 ms", events, "nowait", {}),
            ("emit_nowait, no compression", events, "nowait", {"compression": None}),
            ("emit_batch(1000), gzip", events, "batch1000", {}),
            ("await emit, 100 concurrent", events[: args.count // 5], "emit100", {}),
            ("await emit, 1 at a time", events[:1000], "emit1", {}),
        ]
        rows = [await scenario(n, server.url, ev, m, **c) for n, ev, m, c in plans]
    finally:
        server.stop()

    print(f"\n{args.count} events over {args.tenants} tenants, mean {size:.0f} bytes (JSON)")
    print("Tansu (embedded, in memory), acks=all, idempotence off\n")
    print("| scenario | events | acknowledged | seconds | acknowledged events/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        rate = float(r["acked"]) / float(r["seconds"])  # type: ignore[arg-type]
        print(
            f"| {r['scenario']} | {r['events']} | {r['acked']} | {r['seconds']:.2f} | {rate:,.0f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
