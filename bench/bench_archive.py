"""Archiver throughput against the pipeline's ingestion rate, in the same run.

    .venv/bin/python bench/bench_archive.py --events 20000

On the embedded stack (Tansu, SecantusDB, redis-server started here): a backlog
of ``--events`` events is produced, then one processor worker and the archiver
start at the same moment and both drain it, competing for the same CPUs (as
under ``auditstream up``). Measured:

- processor: events/s from its first stored batch to the last (committed offsets);
- archiver: records/s from its first published segment to the last (manifest);
  its lag is sampled every 0.5 s while both run;
- archive bytes per event (compressed segments) against the stored document size
  (BSON, with seq/hashes);
- replay from the archive (``Replayer``, ``swap=False``: every record from segments)
  against the store's insert ceiling (``insert_many`` with the processor's indexes).

Writes bench/results/archive.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import bson
from common import backlog_parser, progress, write_results
from ingest import produce, store_ceiling, wait_count
from pymongo import AsyncMongoClient
from stack import Stack

from audit_events.codec import event_to_document
from audit_events.storage import EVENTS_COLLECTION
from producers.loadgen import generate_events
from stream_processor.archive.manifest import Manifest
from stream_processor.replay import Replayer


def archived(root: Path, topic: str) -> int:
    try:
        return sum(e.count for e in Manifest.load(root).entries if e.topic == topic)
    except (OSError, ValueError):
        return 0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    stack = Stack(workdir)
    stack.start()
    try:
        settings = stack.settings(  # small segments: progress is seen as it happens
            "archive",
            archiver_metrics_port=0,
            archiver_group="bench-archiver",
            archive_segment_seconds=0.2,
            archive_segment_bytes=1024 * 1024,
        )
        events = list(generate_events(args.events, tenants=args.tenants, seed=1))
        produced = await produce(settings, events)
        root = Path(settings.archive_path())
        stack.spawn(settings, "processor")
        stack.spawn(settings, "archiver")
        samples: list[tuple[float, int]] = []
        (p_secs, p_first), (a_secs, a_first) = await asyncio.gather(
            wait_count(settings, len(events), args.timeout),
            progress(
                lambda: archived(root, settings.topic_events),
                len(events),
                args.timeout,
                samples,
                "archived",
            ),
        )
        stack.stop_children()
        processor_rate = len(events) / p_secs
        archiver_rate = len(events) / a_secs

        manifest = Manifest.load(root)
        entries = [e for e in manifest.entries if e.topic == settings.topic_events]
        archive_bytes = sum(e.size for e in entries)
        raw_bytes = sum(e.raw_bytes for e in entries)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
        store = client[settings.mongo_db][EVENTS_COLLECTION]
        doc_bytes = [len(bson.encode(d)) async for d in store.find({}).limit(2000)]
        await client.close()

        # Replay into events_replay: the archive covers the topic, so every record
        # comes from the segments (the topic tail is empty).
        replay = await Replayer(settings, grace_seconds=0.5).run(swap=False)
        assert replay.archived_records == len(events), replay
        replay_rate = replay.archived_records / max(replay.rebuild_seconds, 1e-9)
        docs = [event_to_document(e, e.occurred_at) for e in events[: args.ceiling_events]]
        ceiling = await store_ceiling(settings, docs, 1000, indexed=True)
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
            "producer_events_per_s": round(produced),
            "processor_events_per_s": round(processor_rate),
            "processor_startup_s": round(p_first, 2),
            "archiver_records_per_s": round(archiver_rate),
            "archiver_startup_s": round(a_first, 2),
            "archiver_vs_processor": round(archiver_rate / processor_rate, 2),
            "archiver_max_lag_behind_processor_records": round(lag_max),
            "segments": len(entries),
            "archive_bytes_per_event": round(archive_bytes / len(events), 1),
            "uncompressed_line_bytes_per_event": round(raw_bytes / len(events), 1),
            "stored_document_bytes_per_event": round(sum(doc_bytes) / len(doc_bytes), 1),
            "replay_from_archive_events_per_s": round(replay_rate),
            "store_insert_ceiling_events_per_s": round(ceiling),
            "replay_vs_ceiling": round(replay_rate / ceiling, 2),
        }
    finally:
        stack.stop()


def parse() -> argparse.Namespace:
    p = backlog_parser(__doc__)
    p.add_argument("--ceiling-events", type=int, default=10_000)
    return p.parse_args()


if __name__ == "__main__":
    write_results("archive.json", asyncio.run(main(parse())))
