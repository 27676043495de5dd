"""Phases 0-2 of ``auditstream replay`` (the rebuild), and the run that ends in the swap.

Records from the archive (:class:`~stream_processor.archive.reader.ArchiveReader`)
and from the topic (:class:`~stream_processor.replay.source.TopicSource`) go
through the processor's own steps — decode + the control-event gate (Step 2),
seal + ordered insert (Step 5), apply control events (Step 6) — into
``events_replay``, so documents, seqs, hashes, corrections and erasures come out
as the live pipeline made them. No fence (replay raises it), no checkpoints
(the live ones stand), no dead letters (the live run sent them), no
invalidation (readers see the rebuilt store only after the swap).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from audit_events.chain import control_keys
from audit_events.codec import document_search_terms
from audit_events.connections import mongo_write_concern
from audit_events.schema import Limits
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.storage import (
    EVENT_INDEXES,
    EVENTS_COLLECTION,
    REPLAY_COLLECTION,
    REPLAY_STATE_COLLECTION,
)
from stream_processor.archive.epochs import decide, probe
from stream_processor.archive.reader import ArchiveReader
from stream_processor.archive.storage import archive_storage
from stream_processor.chain import ChainWriter, Write, ensure_chain_index
from stream_processor.control import ApplyControls, ControlApplier, ControlGate, Keys
from stream_processor.decode import decode_batch
from stream_processor.masking import masked_write
from stream_processor.records import Batch, Record
from stream_processor.replay.result import STATE_ID, ReplayResult
from stream_processor.replay.source import Positions, TopicSource
from stream_processor.replay.swap import Swap

Progress = Callable[[int, int], None]  # (records replayed, records to replay)


class Replayer:
    def __init__(
        self,
        settings: AuditSettings,
        *,
        batch_size: int = 1000,
        grace_seconds: float = 3.0,
        fence_seconds: float = 120.0,
        on_progress: Progress | None = None,
        archive: bool = True,
    ) -> None:
        settings.require("kafka_bootstrap", "mongo_uri")
        self._settings = settings
        self._batch_size = batch_size
        self._grace = grace_seconds
        self._fence_seconds = fence_seconds
        self._on_progress = on_progress
        self._archive = archive  # use the archive (when it exists) before the topic
        self._limits = Limits(settings.max_metadata_bytes, settings.max_metadata_depth)
        self._control_keys = control_keys(settings)
        self._gate = ControlGate(self._control_keys)

    async def run(
        self, *, since: datetime | None = None, fresh: bool = False, swap: bool = True
    ) -> ReplayResult:
        s = self._settings
        # Selection and connect bounded; operations not (renaming a large collection is slow).
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            s.mongo_uri, tz_aware=True, **mongo_client_options(s, operations=False)
        )
        wc = mongo_write_concern(s)
        db = client[s.mongo_db]
        try:
            source = await TopicSource.open(s, self._batch_size)
        except BaseException:
            await client.close()
            raise
        result = ReplayResult()
        started = time.perf_counter()
        try:
            state = db[REPLAY_STATE_COLLECTION].with_options(write_concern=wc)
            target = db[REPLAY_COLLECTION].with_options(write_concern=wc)
            reader = self._reader()
            positions = await self._start(
                db, state, target, source, since, fresh, result, archived=reader is not None
            )
            # Steps 5 and 6 of the processor; only authentic control events are applied
            steps = _Steps(target, self._control_keys, self._settings)
            ends: Positions | None = None  # the first catch-up's, taken during phase 0
            if reader is not None and not result.resumed:
                ends = await self._from_archive(reader, source, positions, steps, result, since)
                await state.update_one(
                    {"_id": STATE_ID},
                    {
                        "$set": {
                            "phase": "running",
                            "positions": {str(p): o for p, o in positions.items()},
                        }
                    },
                )

            async def catch_up() -> None:
                await self._catch_up(source, positions, steps, state, result)

            await self._catch_up(source, positions, steps, state, result, ends)
            result.rebuild_seconds = time.perf_counter() - started
            if swap:
                topic = await source.extent()
                swapper = Swap(
                    s,
                    client,
                    db,
                    state,
                    target,
                    grace_seconds=self._grace,
                    fence_seconds=self._fence_seconds,
                )
                await swapper.run(source, catch_up, topic, result)
            else:
                await state.update_one({"_id": STATE_ID}, {"$set": {"phase": "caught-up"}})
        finally:
            result.seconds = time.perf_counter() - started
            await source.close()
            await client.close()
        return result

    async def _start(
        self,
        db: AsyncDatabase[dict[str, Any]],
        state: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        source: TopicSource,
        since: datetime | None,
        fresh: bool,
        result: ReplayResult,
        *,
        archived: bool = False,
    ) -> Positions:
        saved = await state.find_one({"_id": STATE_ID})
        if saved and saved.get("phase") == "running" and not fresh:
            result.resumed = True
            return {int(p): int(o) for p, o in saved["positions"].items()}
        await target.drop()
        await target.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
        await ensure_chain_index(target)
        if since is None:
            positions = await source.beginnings()
        else:
            await self._copy_before(db[EVENTS_COLLECTION], target, since)
            positions = await source.offsets_at(since)
        await state.replace_one(
            {"_id": STATE_ID},
            {
                # an interrupted archive phase is not resumable: it starts over
                "phase": "archive" if archived else "running",
                "since": since,
                "started_at": datetime.now(UTC),
                "positions": {str(p): o for p, o in positions.items()},
            },
            upsert=True,
        )
        return positions

    def _reader(self) -> ArchiveReader | None:
        """The archive, when enabled and it holds events (raises ``ArchiveError`` if broken)."""
        if not self._archive:
            return None
        reader = ArchiveReader(archive_storage(self._settings))  # directory or S3 bucket
        return reader if reader.partitions(self._settings.topic_events) else None

    async def _from_archive(
        self,
        reader: ArchiveReader,
        source: TopicSource,
        positions: Positions,
        steps: _Steps,
        result: ReplayResult,
        since: datetime | None = None,
    ) -> Positions:
        """Phase 0: every archived record of the events topic, then where the topic takes over.

        With ``since``, a partition's archived records start at its first record
        timestamped at or after it (what ``offsets_for_times`` gives on the topic):
        the events received before are copied from the live store.

        Overlapped, with the same order of writes: probing the broker for where the
        topic takes over (which waits on fetches) runs while the records are written,
        and the next chunk is read and decoded in a thread while the current one is
        written and its control events applied. Returns the topic's end offsets, taken
        after the probes, for the first catch-up (phase 1).
        """
        topic = self._settings.topic_events
        partitions = reader.partitions(topic)
        for partition in partitions:
            result.archive_epochs += len({e.epoch for e in reader.entries(topic, partition)})
        taking_over = asyncio.create_task(self._topic_takes_over(reader, source, partitions))
        chunks = (self._decode(c) for c in self._archived_chunks(reader, partitions, since))
        decoding = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
        try:
            while (batch := await decoding) is not None:
                decoding = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                await self._store(batch, steps, result)
                result.archived_records += len(batch.records)
                self._progress(result, result.records)
            takes_over, ends = await taking_over
            for partition, offset in takes_over.items():
                positions[partition] = max(positions[partition], offset)
            return ends
        finally:  # after an error: the thread's chunk is dropped, the probe stopped
            decoding.cancel()
            taking_over.cancel()
            await asyncio.gather(decoding, taking_over, return_exceptions=True)

    async def _topic_takes_over(
        self, reader: ArchiveReader, source: TopicSource, partitions: list[int]
    ) -> tuple[Positions, Positions]:
        """The archive's end of every partition whose topic continues the archive's
        latest epoch (elsewhere the topic is read from its beginning, or ``since``),
        and then the topic's end offsets (:meth:`TopicSource.ends`)."""
        topic = self._settings.topic_events
        live = {tp.partition: tp for tp in source.tps}
        takes_over: Positions = {}
        for partition in partitions:
            tp = live.get(partition)
            if tp is not None:
                held = reader.state(topic, partition)
                start = decide(held, await probe(source.consumer, tp, held))
                if not start.new_epoch:
                    takes_over[partition] = start.offset
        return takes_over, await source.ends()

    def _archived_chunks(
        self, reader: ArchiveReader, partitions: list[int], since: datetime | None
    ) -> Iterator[list[Record]]:
        """The archived records of ``partitions`` in (epoch, offset) order, a partition's
        records in chunks of at most ``batch_size``; with ``since``, from each partition's
        first record timestamped at or after it."""
        topic = self._settings.topic_events
        since_ms = None if since is None else int(since.timestamp() * 1000)
        for partition in partitions:
            chunk: list[Record] = []
            before = since_ms  # skip records timestamped before this (None: none)
            for record in reader.records(reader.entries(topic, partition)):
                if before is not None:
                    if record.timestamp_ms < before:
                        continue  # received before ``since``: copied from the live store
                    before = None  # from here on, every record of the partition
                chunk.append(record)
                if len(chunk) >= self._batch_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def _decode(self, records: list[Record]) -> Batch:
        """Decode (forged control events are skipped, as the live run dead-lettered them)."""
        return decode_batch(
            records,
            self._limits,
            self._settings.max_event_bytes,
            self._gate,
            tenant_keys_only=self._settings.tenant_keys_only,
        )

    async def _apply(self, records: list[Record], steps: _Steps, result: ReplayResult) -> Batch:
        """Decode, write, apply control events; count."""
        batch = self._decode(records)
        await self._store(batch, steps, result)
        return batch

    async def _store(self, batch: Batch, steps: _Steps, result: ReplayResult) -> None:
        """Write a decoded batch, apply its control events; count."""
        result.rejected += len(batch.rejects)  # already dead-lettered by the live run
        await steps.write(batch)
        await steps.controls(batch)
        written = batch.written
        result.records += len(batch.records)
        if written is not None:
            result.inserted += written.inserted
            result.duplicates += written.duplicates

    def _progress(self, result: ReplayResult, total: int) -> None:
        if self._on_progress is not None:
            self._on_progress(result.records, total)

    async def _copy_before(
        self,
        live: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        since: datetime,
    ) -> None:
        chunk: list[dict[str, Any]] = []
        async for doc in live.find({"received_at": {"$lt": since}}).batch_size(1000):
            # Today's search array (index tokens: docs/operations.md "Index changes"),
            # also for events stored before `auditstream reindex-search`.
            doc["search"] = document_search_terms(doc)
            chunk.append(doc)
            if len(chunk) >= self._batch_size:
                await target.insert_many(chunk, ordered=True)
                chunk = []
        if chunk:
            await target.insert_many(chunk, ordered=True)

    async def _catch_up(
        self,
        source: TopicSource,
        positions: Positions,
        steps: _Steps,
        state: AsyncCollection[dict[str, Any]],
        result: ReplayResult,
        ends: Positions | None = None,
    ) -> None:
        """Phase 1: replay until every partition reaches the end offsets taken now
        (or ``ends``, taken a moment before).

        Phase 2: the positions are saved after every batch, so a crashed replay resumes.
        """
        if ends is None:
            ends = await source.ends()
        total = result.records + sum(max(0, ends[p] - positions[p]) for p in ends)
        source.seek(positions)
        while any(positions[p] < ends[p] for p in ends):
            records = await source.fetch(ends)
            if not records:  # offset gaps (compaction, transactions) below the end
                for partition in await source.reached(ends):
                    positions[partition] = max(positions[partition], ends[partition])
                continue
            batch = await self._apply(records, steps, result)
            for (_, partition), next_offset in batch.committable().items():
                positions[partition] = max(positions[partition], next_offset)
            await state.update_one(
                {"_id": STATE_ID},
                {"$set": {"positions": {str(p): o for p, o in positions.items()}}},
            )
            self._progress(result, total)
        source.seek(positions)  # records fetched past ``ends`` were dropped: re-read them later


class _Steps:
    """The processor's Steps 5 and 6 on the rebuilt collection."""

    def __init__(
        self, target: AsyncCollection[dict[str, Any]], keys: Keys, settings: AuditSettings
    ) -> None:
        # masked as the live run masked (the rules in force at each received_at)
        self.write = masked_write(Write(ChainWriter(target)), target.database, settings)
        self.controls = ApplyControls(ControlApplier(target, keys))
