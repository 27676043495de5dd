"""The archiver: copies every record of the events and checkpoints topics into segments.

Its own consumer group (``AUDITSTREAM_ARCHIVER_GROUP``), aiokafka with
``enable_auto_commit=False``, all partitions assigned to the one archiver of an
archive directory (a lock file keeps a second one out). Per partition, records
are buffered as segment lines; a buffer closes when it holds
``archive_segment_bytes`` or its first record is ``archive_segment_seconds``
old. Closing a set of buffers:

1. each segment is written to a temporary name, fsync'd, renamed, and its
   directory fsync'd (:func:`files.publish`): a half-written segment is never
   visible under its name;
2. their manifest entries are appended and the manifest fsync'd;
3. only then are the offsets committed to Kafka.

Where to start is taken from the manifest, not from the committed offsets
(those are for lag tooling): a crash after step 2 but before step 3 archives
nothing twice, and a crash before step 2 leaves a segment no entry names,
which is removed at the next start with any temporary file. Each record thus
lands in exactly one published segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings
from audit_events.topic_admin import ensure_topics
from stream_processor.archive import files
from stream_processor.archive.epochs import Start, decide, probe, record_of
from stream_processor.archive.manifest import (
    SEGMENTS,
    Entry,
    Manifest,
    PartitionState,
    segment_path,
)
from stream_processor.archive.metrics import ArchiveMetrics
from stream_processor.archive.segment import (
    ArchivedRecord,
    compress,
    encode_line,
    record_digest,
    sha256,
)
from stream_processor.records import Record

log = logging.getLogger("auditstream.archiver")
LOCK = ".lock"
FULL_PROBE_SECONDS = 60.0  # every partition's history is re-checked this often


class ArchiveBusy(RuntimeError):
    """Another archiver holds this archive directory."""


@dataclass
class Buffer:
    """The open segment of one partition."""

    epoch: int
    from_offset: int
    reason: str | None = None  # the epoch's reason, until its first segment is written
    lines: list[bytes] = field(default_factory=list)
    size: int = 0
    first: Record | None = None
    last: Record | None = None
    opened: float = 0.0

    def add(self, rec: Record, timestamp_type: int) -> None:
        line = encode_line(ArchivedRecord(rec, timestamp_type))
        if self.first is None:
            self.first = rec
            self.opened = time.monotonic()
        self.lines.append(line)
        self.size += len(line)
        self.last = rec

    def due(self, max_bytes: int, max_seconds: float, now: float) -> bool:
        return bool(self.lines) and (self.size >= max_bytes or now - self.opened >= max_seconds)


def publish_segments(
    root: Path, manifest: Manifest, closing: list[tuple[str, int, Buffer]]
) -> list[Entry]:
    """Write each buffer as a segment (temp, fsync, rename, fsync dir), then append
    their manifest entries in one fsync'd write. Returns the entries."""
    drafts: list[dict[str, Any]] = []
    written = datetime.now(UTC).isoformat()
    for topic, partition, b in closing:
        assert b.first is not None and b.last is not None
        data = compress(b.lines)
        rel = segment_path(topic, partition, b.epoch, b.first.offset, b.last.offset)
        path = root / rel
        files.make_dirs(path.parent, root)
        files.publish(path, data)
        drafts.append(
            {
                "topic": topic,
                "partition": partition,
                "epoch": b.epoch,
                "from_offset": b.from_offset,
                "first_offset": b.first.offset,
                "last_offset": b.last.offset,
                "count": len(b.lines),
                "size": len(data),
                "raw_bytes": b.size,
                "sha256": sha256(data),
                "path": rel,
                "first_ts": b.first.timestamp_ms,
                "last_ts": b.last.timestamp_ms,
                "last_record": record_digest(b.last),
                "written_at": written,
                "epoch_reason": b.reason,
            }
        )
    return manifest.append(drafts)  # fsync'd: from here on the segments are published


def clean_unpublished(root: Path, manifest: Manifest) -> list[Path]:
    """Remove temporary files and segments no manifest entry names (interrupted writes)."""
    listed = {e.path for e in manifest.entries}
    removed: list[Path] = []
    seg_root = root / SEGMENTS
    if not seg_root.exists():
        return removed
    for path in seg_root.rglob("*"):
        if path.is_file() and path.relative_to(root).as_posix() not in listed:
            path.unlink()
            removed.append(path)
    return removed


def lock_archive(root: Path) -> int:
    """An exclusive lock on ``root`` for this process (released when it exits)."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveBusy(f"another archiver is writing {root}") from None
    return fd


class Archiver:
    def __init__(
        self,
        settings: AuditSettings,
        *,
        root: str | Path | None = None,
        topics: list[str] | None = None,
        metrics: ArchiveMetrics | None = None,
        poll_ms: int = 500,
    ) -> None:
        settings.require("kafka_bootstrap")
        self.settings = settings
        self.root = Path(root or settings.archive_path())
        self.topics = topics or [settings.topic_events, settings.topic_checkpoints]
        self.metrics = metrics or ArchiveMetrics()
        self.poll_ms = poll_ms
        self.max_bytes = settings.archive_segment_bytes
        self.max_seconds = settings.archive_segment_seconds
        self.buffers: dict[TopicPartition, Buffer] = {}
        self.manifest = Manifest(self.root)
        self._consumer: AIOKafkaConsumer | None = None
        self._prober: AIOKafkaConsumer | None = None
        self._next_full_probe = time.monotonic() + FULL_PROBE_SECONDS

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self.root.mkdir(parents=True, exist_ok=True)
        lock = lock_archive(self.root)
        try:
            self.manifest = Manifest.load(self.root)
            self.manifest.cut_torn_tail()
            for path in clean_unpublished(self.root, self.manifest):
                log.warning("removed unpublished file %s (an interrupted write)", path)
            try:  # as the processor and the API do: the topics exist from the spec
                await ensure_topics(self.settings)
            except Exception as exc:  # e.g. not allowed to create: archive what exists
                log.warning("could not create the topics: %s", exc)
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=self.settings.archiver_group,
                enable_auto_commit=False,
                auto_offset_reset="none",
                max_partition_fetch_bytes=4 * 1024 * 1024,
                **kafka_client_options(self.settings),
            )
            # a second consumer, outside the group, for epoch probes while running
            prober = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=None,
                enable_auto_commit=False,
                **kafka_client_options(self.settings),
            )
            await consumer.start()
            await prober.start()
            self._consumer = consumer
            self._prober = prober
            try:
                await self._loop(consumer, stop)
                await self._drain(consumer)
            finally:
                with contextlib.suppress(Exception):
                    await self._close([tp for tp, b in self.buffers.items() if b.lines])
                await prober.stop()
                await consumer.stop()
        finally:
            os.close(lock)

    async def _loop(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        next_check = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_check:
                await self._assign_new(consumer)
                await self._lag(consumer)
                next_check = now + (5.0 if self.buffers else 0.5)
            if not self.buffers:
                await _wait(stop, 1.0)
                continue
            try:
                fetched = await consumer.getmany(timeout_ms=self.poll_ms, max_records=10_000)
            except OffsetOutOfRangeError as exc:
                gone = [tp for tp in getattr(exc, "args", [{}])[0] or {} if tp in self.buffers]
                await self._restart(consumer, gone or list(self.buffers))
                continue
            for tp, messages in fetched.items():
                buf = self.buffers.get(tp)
                if buf is None:
                    continue
                for m in messages:
                    buf.add(record_of(m), int(getattr(m, "timestamp_type", 0) or 0))
                    if buf.size >= self.max_bytes:  # by size: close at once, mid-fetch
                        await self._close([tp])
                        buf = self.buffers[tp]
            now = time.monotonic()
            due = [
                tp for tp, b in self.buffers.items() if b.due(self.max_bytes, self.max_seconds, now)
            ]
            if due:
                await self._close(due)

    async def _drain(self, consumer: AIOKafkaConsumer, seconds: float = 10.0) -> None:
        """At stop: take what the topics hold now (up to ``seconds``), then publish it.

        An embedded broker forgets everything when it stops after us; what the
        archive lacks then is lost for replay.
        """
        deadline = time.monotonic() + seconds
        quiet = 0
        while self.buffers and quiet < 2 and time.monotonic() < deadline:
            try:
                fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            except OffsetOutOfRangeError:
                break
            quiet = 0 if fetched else quiet + 1
            for tp, messages in fetched.items():
                buf = self.buffers.get(tp)
                if buf is None:
                    continue
                for m in messages:
                    buf.add(record_of(m), int(getattr(m, "timestamp_type", 0) or 0))
        await self._close([tp for tp, b in self.buffers.items() if b.lines])
        log.info("stopped; %d segments in the manifest", len(self.manifest.entries))

    async def _assign_new(self, consumer: AIOKafkaConsumer) -> None:
        """Assign partitions that appeared (topics created after start) and place them."""
        # A fresh view of the cluster: consumer.topics() fetches one but keeps only the
        # names, and partitions_for_topic() reads the client's cached view, which
        # does not learn of topics created after the start.
        cluster = await consumer._client.fetch_all_metadata()
        known = set(self.buffers)
        found: set[TopicPartition] = set()
        for topic in self.topics:
            for p in cluster.partitions_for_topic(topic) or ():
                found.add(TopicPartition(topic, p))
        new = sorted(found - known)
        if not new:
            return
        consumer.assign(sorted(found | known))
        await self._place(consumer, new)
        for tp in known:  # re-assigning resets positions: put the old ones back
            b = self.buffers[tp]
            consumer.seek(tp, b.last.offset + 1 if b.last else b.from_offset)

    async def _place(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        state = self.manifest.state()
        for tp in tps:
            st = state.get((tp.topic, tp.partition))
            start: Start = decide(st, await probe(consumer, tp, st))
            if start.new_epoch and st is not None:
                log.warning(
                    "%s/%d: epoch %d begins: %s", tp.topic, tp.partition, start.epoch, start.reason
                )
                self.metrics.epochs.labels(tp.topic).inc()
            self.buffers[tp] = Buffer(start.epoch, start.offset, start.reason)
            log.info(
                "%s/%d: archiving epoch %d from offset %d",
                tp.topic,
                tp.partition,
                start.epoch,
                start.offset,
            )
            consumer.seek(tp, start.offset)

    async def _restart(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """The topic no longer has our position: archive what we hold, then re-decide."""
        await self._close([tp for tp in tps if self.buffers[tp].lines])
        for tp in tps:
            del self.buffers[tp]
        await self._place(consumer, tps)

    async def _close(self, tps: list[TopicPartition]) -> None:
        """Publish the segments of ``tps``, append their entries, then commit."""
        if not tps:
            return
        entries = publish_segments(
            self.root, self.manifest, [(tp.topic, tp.partition, self.buffers[tp]) for tp in tps]
        )
        drafts = [e.__dict__ for e in entries]
        offsets = {}
        for tp, d in zip(tps, drafts, strict=True):
            b = self.buffers[tp]
            self.buffers[tp] = Buffer(b.epoch, d["last_offset"] + 1)
            offsets[tp] = d["last_offset"] + 1
            self.metrics.segments.labels(tp.topic).inc()
            self.metrics.records.labels(tp.topic).inc(d["count"])
            self.metrics.bytes.labels(tp.topic).inc(d["size"])
        self.metrics.last_segment.set(time.time())
        if self._consumer is not None:
            try:
                await self._consumer.commit(offsets)
            except Exception as exc:  # the manifest is the truth; the group is for lag tools
                log.warning("offset commit failed (the manifest keeps the position): %r", exc)

    async def _lag(self, consumer: AIOKafkaConsumer) -> None:
        if not self.buffers:
            return
        try:
            ends = await consumer.end_offsets(list(self.buffers))
        except Exception:  # lag is a metric; the loop goes on
            return
        for tp, b in self.buffers.items():
            archived = b.from_offset
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                max(0, int(ends[tp]) - archived)
            )
        # The topic's end behind our position: perhaps its history restarted. (On
        # Tansu the reported end can lag the true end by a batch, so this is only a
        # suspicion; the probe decides.) And every partition once in a while.
        full = time.monotonic() >= self._next_full_probe
        if full:
            self._next_full_probe = time.monotonic() + FULL_PROBE_SECONDS
        suspects = [tp for tp, b in self.buffers.items() if full or int(ends[tp]) < _position(b)]
        for tp in suspects:
            await self._recheck(consumer, tp)

    async def _recheck(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Probe ``tp`` against what we hold of it (buffer, else manifest); on a new
        epoch, publish the buffer (it is the old history's) and start over there."""
        if self._prober is None:
            return
        b = self.buffers[tp]
        if b.last is not None:
            held: PartitionState | None = PartitionState(
                b.epoch,
                b.last.offset + 1,
                record_digest(b.last),
            )
        else:
            held = self.manifest.state().get((tp.topic, tp.partition))
            if held is not None and held.epoch != b.epoch:
                held = None  # the buffer opened an epoch with nothing in it yet
        if held is None:
            return
        try:
            self._prober.assign([tp])
            start = decide(held, await probe(self._prober, tp, held))
        except Exception as exc:  # a probe is a check; the loop goes on
            log.warning("%s/%d: history probe failed: %s", tp.topic, tp.partition, exc)
            return
        if not start.new_epoch:
            return
        log.warning("%s/%d: epoch %d begins: %s", tp.topic, tp.partition, start.epoch, start.reason)
        self.metrics.epochs.labels(tp.topic).inc()
        if b.lines:
            await self._close([tp])
        self.buffers[tp] = Buffer(start.epoch, start.offset, start.reason)
        consumer.seek(tp, start.offset)


def _position(b: Buffer) -> int:
    return b.last.offset + 1 if b.last is not None else b.from_offset


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_archiver(settings: AuditSettings) -> None:
    """``auditstream archiver``: run until SIGINT/SIGTERM, then publish what is buffered."""
    import signal

    from prometheus_client import start_http_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s archiver %(message)s")
    archiver = Archiver(settings)
    if settings.archiver_metrics_port:
        try:
            start_http_server(  # bound like the workers' endpoints
                settings.archiver_metrics_port,
                addr=settings.processor_metrics_host,
                registry=archiver.metrics.registry,
            )
        except OSError as exc:  # metrics are not worth losing the archive over
            log.warning("no metrics endpoint on port %s: %s", settings.archiver_metrics_port, exc)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await archiver.run(stop)

    asyncio.run(main())
