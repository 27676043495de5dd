"""Processor CPU per 1,000 events on its decode + seal + write path, the store free.

    .venv/bin/python bench/bench_processor_cpu.py [--events 20000] [--rounds 5]

Builds Kafka records as the SDK's producers write them (``encode_event`` of
``auditstream loadgen``'s events, 50 tenants, key = tenant) and runs them, 500 per
batch (the processor's default flush size), through the live processor's own
steps: ``stream_processor.decode.decode_batch`` (Step 2: validate, the stored
document, its search terms and content hash) and ``stream_processor.chain.ChainWriter``
(Step 5: seal each document into its tenant's chain, then ``insert_many``) against
a store that costs nothing: a collection whose ``insert_many`` only BSON-encodes
the documents (what PyMongo does before it sends them) and whose chain is empty.
Kafka consumption, Redis invalidation, masking and checkpoints are not in it.

Prints the CPU time of this process (``time.process_time``) per 1,000 events, p50
of ``--rounds``, for decode, seal + BSON, and both, beside the target (100 ms,
issue 18) as a ratio. Writes ``bench/results/processor_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import bson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit_events.codec import encode_event
from audit_events.retention import PURGES_COLLECTION
from audit_events.schema import Limits
from producers.loadgen import generate_events
from stream_processor.chain import ChainWriter
from stream_processor.decode import decode_batch
from stream_processor.records import Record

TARGET_MS = 100.0
BATCH = 500
MAX_BYTES = 1024 * 1024
RESULTS = Path(__file__).parent / "results"


class FreeStore:
    """An events collection that costs nothing: empty chains, inserts BSON-encoded
    (the driver's share of an insert) and dropped."""

    def __init__(self) -> None:
        self.encoded = 0
        # Its database's collections (the purge markers chain_head reads) are as empty;
        # a dict has no ``client``, so capabilities_of() takes the conservative paths.
        self.database: dict[str, FreeStore] = {PURGES_COLLECTION: self}

    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool = True) -> None:
        for doc in documents:
            self.encoded += len(bson.encode(doc))


def records(count: int) -> list[Record]:
    now_ms = int(time.time() * 1000)
    return [
        Record("audit.events", i % 6, i, now_ms, e.tenant.encode(), encode_event(e))
        for i, e in enumerate(generate_events(count, tenants=50, seed=7))
    ]


async def one_round(recs: list[Record]) -> tuple[float, float]:
    """(decode seconds, seal + write seconds) of CPU for ``recs``."""
    writer = ChainWriter(FreeStore())  # type: ignore[arg-type]
    limits = Limits()
    decoding = writing = 0.0
    for i in range(0, len(recs), BATCH):
        t0 = time.process_time()
        batch = decode_batch(recs[i : i + BATCH], limits, MAX_BYTES)
        t1 = time.process_time()
        result = await writer.insert(batch.documents)
        t2 = time.process_time()
        if batch.rejects or result.inserted != len(batch.accepted):
            raise SystemExit(f"batch {i}: {len(batch.rejects)} rejected, {result}")
        decoding += t1 - t0
        writing += t2 - t1
    return decoding, writing


async def run(count: int, rounds: int) -> dict[str, Any]:
    recs = records(count)
    await one_round(recs[:BATCH])  # warm-up (imports, caches)
    per_k = 1000 / count * 1000  # seconds for `count` events -> ms per 1,000
    decode_ms, write_ms, total_ms = [], [], []
    for _ in range(rounds):
        d, w = await one_round(recs)
        decode_ms.append(d * per_k)
        write_ms.append(w * per_k)
        total_ms.append((d + w) * per_k)
    total = statistics.median(total_ms)
    return {
        "events": count,
        "rounds": rounds,
        "decode_ms_per_1000": round(statistics.median(decode_ms), 1),
        "seal_write_ms_per_1000": round(statistics.median(write_ms), 1),
        "total_ms_per_1000": round(total, 1),
        "events_per_s_per_core": round(1000 / total * 1000),
        "target_ms_per_1000": TARGET_MS,
        "ratio_to_target": round(total / TARGET_MS, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.events, args.rounds))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "processor_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"processor CPU per 1,000 events (decode + seal + write, free store): "
        f"{result['total_ms_per_1000']} ms (decode {result['decode_ms_per_1000']}, "
        f"seal + BSON {result['seal_write_ms_per_1000']}) = "
        f"{result['ratio_to_target']}x the {TARGET_MS:.0f} ms target, "
        f"~{result['events_per_s_per_core']:,} events/s per core"
    )


if __name__ == "__main__":
    main()
