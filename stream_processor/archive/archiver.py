"""The archiver: copies every record of the events and checkpoints topics into segments.

Its own consumer group (``AUDITSTREAM_ARCHIVER_GROUP``), aiokafka with
``enable_auto_commit=False``, all partitions assigned to the one archiver of an
archive (a lock file keeps a second one out of a directory; in a bucket the
create-only manifest parts do, :mod:`.storage`). Per partition, records
are buffered as segment lines; a buffer closes when it holds
``archive_segment_bytes`` or its first record is ``archive_segment_seconds``
old. Closing a set of buffers:

1. each segment is made durable under its name: in a directory written to a
   temporary name, fsync'd, renamed, and its directory fsync'd
   (:func:`files.publish`); in a bucket PUT until the store acknowledges it.
   A half-written segment is never visible under its name;
2. their manifest entries are appended durably (fsync'd / PUT acknowledged);
3. only then are the offsets committed to Kafka.

When the disk or the object store fails, the archiver retries the same
publication (same bytes) with backoff, fetching and committing nothing
meanwhile: its lag grows, and drains once the store is back.

Where to start is taken from the manifest, not from the committed offsets
(those are for lag tooling): a crash after step 2 but before step 3 archives
nothing twice, and a crash before step 2 leaves a segment no entry names,
which is removed at the next start with any temporary file. Each record thus
lands in exactly one published segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from audit_events.connections import kafka_client_options
from audit_events.objectstore import ObjectStoreError
from audit_events.settings import AuditSettings
from audit_events.topic_admin import ensure_topics
from stream_processor.archive.epochs import Start, decide, probe, record_of
from stream_processor.archive.manifest import (
    Entry,
    Manifest,
    PartitionState,
    segment_path,
)
from stream_processor.archive.masking import ArchiveRules, MaskingUnavailable
from stream_processor.archive.metrics import ArchiveMetrics
from stream_processor.archive.segment import (
    ArchivedRecord,
    compress,
    encode_line,
    record_digest,
    sha256,
)
from stream_processor.archive.storage import (
    ArchiveBusy,
    ArchiveStorage,
    DirectoryStorage,
    archive_storage,
    as_storage,
)
from stream_processor.offsets import true_end_offsets
from stream_processor.records import Record, tolerate_undecodable_header_names

__all__ = ["ArchiveBusy", "Archiver", "Buffer", "clean_unpublished", "publish_segments"]

T = TypeVar("T")
log = logging.getLogger("auditstream.archiver")
RETRY_MAX_SECONDS = 5.0  # the longest pause between attempts to publish
FULL_PROBE_SECONDS = 60.0  # every partition's history is re-checked this often


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

    def add(self, rec: Record, timestamp_type: int, stored: Record | None = None) -> None:
        # ``stored``: the masked copy to archive; ``rec`` (as in the topic) stays the
        # reference of the epoch probes (``last``)
        line = encode_line(ArchivedRecord(stored or rec, timestamp_type))
        if self.first is None:
            self.first = rec
            self.opened = time.monotonic()
        self.lines.append(line)
        self.size += len(line)
        self.last = rec

    def due(self, max_bytes: int, max_seconds: float, now: float) -> bool:
        return bool(self.lines) and (self.size >= max_bytes or now - self.opened >= max_seconds)


@dataclass
class Publication:
    """Segments and their manifest entries, built once so a retry writes the same bytes."""

    segments: list[tuple[str, bytes]]
    entries: list[Entry]
    lines: list[bytes]


def prepare_segments(manifest: Manifest, closing: list[tuple[str, int, Buffer]]) -> Publication:
    """Compress each buffer and chain its manifest entry (nothing written yet)."""
    drafts: list[dict[str, Any]] = []
    segments: list[tuple[str, bytes]] = []
    written = datetime.now(UTC).isoformat()
    for topic, partition, b in closing:
        assert b.first is not None and b.last is not None
        data = compress(b.lines)
        rel = segment_path(topic, partition, b.epoch, b.first.offset, b.last.offset)
        segments.append((rel, data))
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
    entries, lines = manifest.prepare(drafts)
    return Publication(segments, entries, lines)


async def write_publication(manifest: Manifest, pub: Publication) -> list[Entry]:
    """Publish the segments (each durable: fsync'd, or its PUT acknowledged), then append
    their manifest entries in one durable write. Idempotent: a failed attempt may be
    repeated with the same ``pub``."""
    storage = manifest.storage
    for rel, data in pub.segments:
        await storage.put_segment(rel, data)
    return await manifest.commit(pub.entries, pub.lines)  # from here on: published


async def publish_segments(
    root: str | Path | ArchiveStorage, manifest: Manifest, closing: list[tuple[str, int, Buffer]]
) -> list[Entry]:
    """Write each buffer as a segment, then append their manifest entries. Returns them."""
    del root  # the manifest knows its storage
    return await write_publication(manifest, prepare_segments(manifest, closing))


def clean_unpublished(root: str | Path | ArchiveStorage, manifest: Manifest) -> list[str]:
    """Remove temporary files and segments no manifest entry names (interrupted writes)."""
    storage = as_storage(root)
    listed = {e.path for e in manifest.entries}
    removed: list[str] = []
    for rel in storage.list_segment_files():
        if rel not in listed:
            storage.delete(rel)
            removed.append(rel)
    return removed


class Archiver:
    def __init__(
        self,
        settings: AuditSettings,
        *,
        root: str | Path | None = None,
        storage: ArchiveStorage | None = None,
        topics: list[str] | None = None,
        metrics: ArchiveMetrics | None = None,
        poll_ms: int = 500,
    ) -> None:
        settings.require("kafka_bootstrap")
        self.settings = settings
        if storage is None:
            storage = DirectoryStorage(root) if root is not None else archive_storage(settings)
        self.storage = storage
        self.topics = topics or [settings.topic_events, settings.topic_checkpoints]
        self.metrics = metrics or ArchiveMetrics()
        self.poll_ms = poll_ms
        self.max_bytes = settings.archive_segment_bytes
        self.max_seconds = settings.archive_segment_seconds
        self.buffers: dict[TopicPartition, Buffer] = {}
        self.manifest = Manifest(self.storage)
        # the archived copy is masked (docs/masking.md): one MongoDB client for the
        # archiver's life; while MongoDB is down the archiving waits (docs/archive.md)
        self.rules = ArchiveRules(settings)
        self._stop: asyncio.Event | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._prober: AIOKafkaConsumer | None = None
        self._next_full_probe = time.monotonic() + FULL_PROBE_SECONDS

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._stop = stop
        with self.storage.lock():
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        # the archive is locked (directory) or fenced (bucket) from here on
        self.manifest = await self._retry(
            "read the manifest", lambda: asyncio.to_thread(Manifest.load, self.storage)
        )
        self.manifest.cut_torn_tail()
        removed = await self._retry(
            "clean unpublished segments",
            lambda: asyncio.to_thread(clean_unpublished, self.storage, self.manifest),
        )
        for path in removed:
            log.warning("removed unpublished file %s (an interrupted write)", path)
        log.info("archiving into %s", self.storage.describe())
        try:  # as the processor and the API do: the topics exist from the spec
            await ensure_topics(self.settings)
        except Exception as exc:  # e.g. not allowed to create: archive what exists
            log.warning("could not create the topics: %s", exc)
        tolerate_undecodable_header_names()  # a header name that is not UTF-8 (records.py)
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
        except (ObjectStoreError, OSError) as exc:
            if not stop.is_set():
                raise
            # stopped while the store was down: nothing unpublished was committed,
            # the next start archives it
            log.warning("stopped without publishing the buffered records: %s", exc)
            self.buffers.clear()
        except MaskingUnavailable as exc:
            # stopped while MongoDB was down: the records not yet masked stay in the
            # topic (the manifest's position), the masked ones buffered are published
            log.warning("stopped while the masking rules were unavailable: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await self._close([tp for tp, b in self.buffers.items() if b.lines])
            await prober.stop()
            await consumer.stop()
            await self.rules.close()

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
                for rec, out, ts_type in await self.rules.records(messages, record_of, stop):
                    buf.add(rec, ts_type, out)
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
        target = await self._stop_target()
        quiet = 0
        while self.buffers and quiet < 2 and time.monotonic() < deadline:
            if target and all(_position(self.buffers[tp]) >= end for tp, end in target.items()):
                break  # what the topics held at the stop: producers that go on do not hold us
            try:
                fetched = await consumer.getmany(timeout_ms=200, max_records=10_000)
            except OffsetOutOfRangeError:
                break
            quiet = 0 if fetched else quiet + 1
            for tp, messages in fetched.items():
                buf = self.buffers.get(tp)
                if buf is None:
                    continue
                for rec, out, ts_type in await self.rules.records(messages, record_of, self._stop):
                    buf.add(rec, ts_type, out)
        await self._close([tp for tp, b in self.buffers.items() if b.lines])
        log.info("stopped; %d segments in the manifest", len(self.manifest.entries))

    async def _stop_target(self) -> dict[TopicPartition, int]:
        """The true end of every archived partition now ({} when unknown)."""
        if self._prober is None or not self.buffers:
            return {}
        target: dict[TopicPartition, int] = {}
        try:
            for topic in sorted({tp.topic for tp in self.buffers}):
                tps = [tp for tp in self.buffers if tp.topic == topic]
                self._prober.assign(tps)
                ends = await true_end_offsets(self._prober, tps)
                target.update({tp: ends[tp.partition] for tp in tps})
        except Exception as exc:  # then the drain ends when the topics are quiet
            log.warning("could not read the end offsets at stop: %s", exc)
            return {}
        return target

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
        pub = prepare_segments(
            self.manifest, [(tp.topic, tp.partition, self.buffers[tp]) for tp in tps]
        )
        entries = await self._retry(
            "publish segments", lambda: write_publication(self.manifest, pub), published=True
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

    async def _retry(
        self, what: str, attempt: Callable[[], Awaitable[T]], *, published: bool = False
    ) -> T:
        """``attempt()`` until it succeeds: the object store (or disk) down holds the
        archiver here, committing nothing, and fetching nothing more (its lag grows).

        Gives up (re-raises) only when the archiver is being stopped. ``published``:
        count the failures as failed segment writes.
        """
        delay = 0.2
        while True:
            try:
                return await attempt()
            except ArchiveBusy:
                raise
            except (ObjectStoreError, OSError) as exc:
                if published:
                    self.metrics.write_errors.inc()
                if self._stop is not None and self._stop.is_set():
                    raise
                log.warning("could not %s (retrying in %.1fs): %s", what, delay, exc)
                await _wait(self._stop or asyncio.Event(), delay * random.uniform(0.5, 1.0))
                delay = min(RETRY_MAX_SECONDS, delay * 2)

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
