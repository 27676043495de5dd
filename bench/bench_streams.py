"""Webhook stream delivery against the pipeline's ingestion rate, in the same run.

    .venv/bin/python bench/bench_streams.py --events 20000 --tenants 20

On the embedded stack (Tansu, SecantusDB, redis-server started here): a backlog
of ``--events`` events over ``--tenants`` tenants (Zipf: tenant-000 is the
hottest) is produced; every tenant gets one webhook destination (from the
beginning, ``--batch-size`` events per request) pointing at an HTTPS receiver
on loopback (tests/stream_receivers.py: TLS, every signature checked). Then one
processor worker and one ``auditstream streamer`` start at the same moment and
compete for the same CPUs. Measured:

- processor: events/s from its first stored batch to the last;
- streamer: events/s from the first delivered batch to the last (every event
  of every tenant received, in seq order per tenant, signatures valid);
- the streamer's worst lag behind the processor, sampled every 0.5 s;
- then the streamer alone, draining the whole stored backlog to fresh
  destinations (its ceiling on this machine, the processor stopped).

Writes bench/results/streams.json.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import backlog_parser, progress, write_results
from ingest import produce, wait_count
from pymongo import AsyncMongoClient
from stack import Stack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.stream_receivers

from audit_events.streams import STREAMS_COLLECTION, StreamCreate, new_stream_document
from producers.loadgen import generate_events
from tests.stream_receivers import Receiver, self_signed

SECRET = "bench-webhook-secret-0123456789"


async def delivered_progress(
    rec: Receiver, expected: int, timeout: float, samples: list[tuple[float, int]]
) -> tuple[float, float]:
    """(seconds from the first delivered event to ``expected``, seconds to the first)."""
    return await progress(lambda: len(rec.events()), expected, timeout, samples, "delivered")


async def destinations(
    uri: str | None, db: str, tenants: list[str], url: str, args: argparse.Namespace
) -> None:
    """One webhook destination per tenant, from the beginning (replacing earlier ones)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    streams = client[db][STREAMS_COLLECTION]
    await streams.delete_many({})
    for tenant in tenants:
        body = StreamCreate(
            kind="webhook", name="bench", secret=SECRET, url=url,
            batch_size=args.batch_size, start="beginning",
        )  # fmt: skip
        await streams.insert_one(
            new_stream_document(
                tenant, body, head_seq=0, by="bench",
                stream_id="st_" + secrets.token_hex(8), now=datetime.now(UTC),
            )
        )  # fmt: skip
    await client.close()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    cert, key = self_signed(workdir)
    rec = Receiver(cert, key, secrets=[SECRET]).start()
    stack = Stack(workdir)
    stack.start()
    try:
        settings = stack.settings(
            "streams", streamer_metrics_port=0, streams_ca_file=str(cert),
            streams_allow_private_hosts=True, streams_poll_seconds=0.1,
        )  # fmt: skip
        events = list(generate_events(args.events, tenants=args.tenants, seed=1))
        tenants = sorted({e.tenant for e in events})
        await destinations(settings.mongo_uri, settings.mongo_db, tenants, rec.url, args)
        produced = await produce(settings, events)
        stack.spawn(settings, "processor")
        stack.spawn(settings, "streamer")
        samples: list[tuple[float, int]] = []
        (p_secs, p_first), (s_secs, s_first) = await asyncio.gather(
            wait_count(settings, len(events), args.timeout),
            delivered_progress(rec, len(events), args.timeout, samples),
        )
        stack.stop_children()
        got = rec.events()
        by_tenant: dict[str, list[int]] = {}
        for e in got:
            by_tenant.setdefault(e["tenant"], []).append(e["seq"])
        in_order = all(seqs == sorted(seqs) for seqs in by_tenant.values())
        unique = len({(e["tenant"], e["seq"]) for e in got})
        requests, bad = len(rec.requests), rec.bad_signatures
        # Phase 2: the streamer alone drains the whole stored backlog (new destinations).
        with rec.lock:
            rec.batches.clear()
            rec.requests.clear()
        await destinations(settings.mongo_uri, settings.mongo_db, tenants, rec.url, args)
        stack.spawn(settings, "streamer")
        b_secs, _ = await delivered_progress(rec, len(events), args.timeout, [])
        stack.stop_children()
        processor_rate = len(events) / p_secs
        stream_rate = len(events) / s_secs
        lag_max = max(
            (
                max(0, min(len(events), (t - p_first) * processor_rate) - n)
                for t, n in samples
                if t >= p_first
            ),
            default=0,
        )
        return {
            "events": len(events),
            "tenants": len(tenants),
            "destinations": len(tenants),
            "batch_size": args.batch_size,
            "producer_events_per_s": round(produced),
            "processor_events_per_s": round(processor_rate),
            "streamer_events_per_s": round(stream_rate),
            "streamer_vs_processor": round(stream_rate / processor_rate, 2),
            "streamer_max_lag_behind_processor_events": round(lag_max),
            # > 0: the last event reached the receiver this long after it was stored
            "streamer_done_after_processor_s": round((s_first + s_secs) - (p_first + p_secs), 2),
            "streamer_backlog_alone_events_per_s": round(len(events) / b_secs),
            "processor_startup_s": round(p_first, 2),
            "streamer_first_delivery_s": round(s_first, 2),
            "webhook_requests": requests,
            "bad_signatures": rec.bad_signatures,
            "bad_signatures_phase1": bad,
            "delivered_unique": unique,
            "duplicates": len(got) - unique,
            "in_order_per_tenant": in_order,
        }
    finally:
        stack.stop()
        rec.stop()


def parse() -> argparse.Namespace:
    p = backlog_parser(__doc__)
    p.add_argument("--batch-size", type=int, default=100)
    return p.parse_args()


if __name__ == "__main__":
    write_results("streams.json", asyncio.run(main(parse())))
