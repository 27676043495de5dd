"""``auditstream archive status``: the last segment and the lag of every partition."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_processor.archive.epochs import decide, probe
from stream_processor.archive.manifest import Manifest
from stream_processor.archive.storage import ArchiveStorage, as_storage


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    epoch: int | None
    archived_to: int | None  # next offset after the archived records (of the epoch)
    segments: int
    last_segment: str | None
    last_written: str | None
    topic_end: int | None = None
    lag_records: int | None = None
    lag_seconds: float | None = None  # age of the oldest record not yet archived
    note: str | None = None  # e.g. the topic restarted: a new epoch will begin


async def archive_status(
    root: str | Path | ArchiveStorage,
    bootstrap: str | None,
    topics: list[str],
    kafka_options: dict[str, Any] | None = None,
) -> list[PartitionStatus]:
    """``kafka_options``: the client security options (``kafka_client_options``)."""
    manifest = await asyncio.to_thread(Manifest.load, as_storage(root))
    state = manifest.state()
    counts: dict[tuple[str, int], int] = {}
    for e in manifest.entries:
        counts[(e.topic, e.partition)] = counts.get((e.topic, e.partition), 0) + 1
    out: dict[tuple[str, int], PartitionStatus] = {}
    for (topic, p), st in state.items():
        out[(topic, p)] = PartitionStatus(
            topic,
            p,
            st.epoch,
            st.next_offset,
            counts[(topic, p)],
            st.last.path if st.last else None,
            st.last.written_at if st.last else None,
        )
    if bootstrap:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **(kafka_options or {}),
        )
        await consumer.start()
        try:
            await consumer.topics()
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            consumer.assign(tps)
            for tp in tps:
                held = state.get((tp.topic, tp.partition))
                view = await probe(consumer, tp, held)
                start = decide(held, view)
                ps = out.setdefault(
                    (tp.topic, tp.partition),
                    PartitionStatus(tp.topic, tp.partition, None, None, 0, None, None),
                )
                ps.topic_end = view.end
                ps.lag_records = max(0, view.end - start.offset)
                if held is not None and start.new_epoch:
                    ps.note = f"new epoch {start.epoch} on the next archiver start: {start.reason}"
                ps.lag_seconds = 0.0
                if ps.lag_records:
                    consumer.seek(tp, start.offset)
                    fetched = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
                    msgs = fetched.get(tp) or []
                    if msgs:
                        ps.lag_seconds = max(0.0, time.time() - msgs[0].timestamp / 1000)
        finally:
            await consumer.stop()
    return [out[k] for k in sorted(out)]
