"""``auditstream replay``: rebuild the store from the archive and the events topic;
swap it in only if complete.

0. Archive + tail (issue 16): when the archiver's archive exists (``<data
   dir>/archive`` or ``AUDITSTREAM_ARCHIVE_DIR``), every archived record of the
   events topic is replayed first, per partition in (epoch, offset) order: each
   epoch is a history the topic once held (a restarted broker's offsets start
   again at 0 with only the new events). Then the topic itself: from where the
   archive ends when the topic still holds the archive's latest epoch, from its
   beginning when its history restarted since (:func:`archive.epochs.decide`,
   the archiver's own test). Segments are checked against their SHA-256 and
   the manifest chain as they are read.
1. Into a fresh ``events_replay`` collection (same indexes, unique chain index),
   from the beginning of the topic (or where the archive ends) — or, with ``since``
   (which does not use the archive), from the offsets of that
   time (``offsets_for_times``) after copying the live events received before it.
   Records go through the processor's own steps (decode → :class:`ChainedStore`,
   which seals, writes and applies corrections/erasures), so documents, seqs,
   hashes, corrections and erasures come out identical. Live ingestion goes on.
2. Resumable: the next offset per partition is saved in ``replay_state`` after
   every batch; a crashed replay continues from there (a batch replayed twice is
   harmless: ids already stored are skipped).
3. Verify the rebuilt chains (hashes, links, signed checkpoints) while live
   writers still run; a broken rebuilt chain is refused at once.
4. Fence: set ``replay_state/fence`` (with a deadline) so live writers pause —
   :class:`ChainedStore` checks it before every batch and backs off while it is
   up — wait a grace period for batches already in flight, then catch up to the
   topic's end offsets *taken after the grace period* (they cover every event a
   live writer could have consumed).
5. Coverage, under the fence, before anything is renamed: for every tenant of
   the live store, the rebuilt chain must reach the live head seq with the same
   hash there, hold at least as many events, and verify from where step 3
   stopped to its end, reaching every signed checkpoint. Otherwise the replay is
   *refused*: the fence is lifted, the live store is untouched, ``events_replay``
   is kept for inspection and :attr:`ReplayResult.refusal` says, in one line,
   what the topic is missing (e.g. it starts at offset N, or rebuilt M of a
   tenant's K events). Nothing ever replaces stored events with fewer.
6. Swap: ``renameCollection(events_replay → events, dropTarget)`` and lift the
   fence (bumping its generation, so writers forget their cached chain heads). A
   live write that was still in flight lands either in the old collection
   (dropped; the replay already holds its events) or in the new one, where its
   ids already exist (skipped) — the unique (tenant, seq) index makes a fork
   impossible. If the replay dies with the fence up, live writers resume at its
   deadline; if the checks outlast the deadline, the replay refuses instead of
   swapping (writers may have resumed).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.write_concern import WriteConcern

from audit_events.chain import (
    GENESIS,
    Report,
    checkpoint_keys,
    control_keys,
    verify_chain,
)
from audit_events.codec import canonical_json
from audit_events.connections import kafka_client_options
from audit_events.schema import Limits
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.storage import (
    CHECKPOINTS_COLLECTION,
    EVENT_INDEXES,
    EVENTS_COLLECTION,
    REPLAY_COLLECTION,
    REPLAY_STATE_COLLECTION,
)
from stream_processor.archive.epochs import decide, probe
from stream_processor.archive.reader import ArchiveReader
from stream_processor.chain import FENCE_ID, ChainedStore, derive_head, ensure_chain_index
from stream_processor.control import ControlGate
from stream_processor.decode import decode_batch
from stream_processor.offsets import true_end_offsets
from stream_processor.records import Record

STATE_ID = "replay"
__all__ = ["ReplayResult", "Replayer", "store_digest", "true_end_offsets"]
Progress = Callable[[int, int], None]  # (records replayed, records to replay)


@dataclass
class ReplayResult:
    records: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    seconds: float = 0.0  # the whole run: rebuild, swap and the verification after it
    rebuild_seconds: float = 0.0  # topic → decode → chain → write, up to the swap's fence
    fenced_seconds: float = 0.0  # how long live writers were paused (fence up → lifted)
    fence_phases: dict[str, float] = field(default_factory=dict)  # seconds per step under it
    resumed: bool = False
    swapped: bool = False
    archived_records: int = 0  # of ``records``, read from the archive (the rest from the topic)
    archive_epochs: int = 0  # distinct (partition, epoch) histories read from the archive
    live_count: int | None = None
    replay_count: int | None = None
    # the rebuilt chains, verified before the swap
    reports: list[Report] = field(default_factory=list)
    refusal: str | None = None  # one line: why the rebuilt store was not swapped in

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        # The rebuilt store holds at least what the live one held (more when the live
        # processor lagged behind the topic, or the live store was lost).
        counts = self.live_count is None or (self.replay_count or 0) >= self.live_count
        return self.refusal is None and counts and all(r.ok for r in self.reports)


async def store_digest(collection: AsyncCollection[dict[str, Any]]) -> tuple[int, str]:
    """(count, SHA-256 of every document's canonical JSON, sorted by id)."""
    digest = hashlib.sha256()
    count = 0
    async for doc in collection.find({}).sort([("_id", 1)]).batch_size(1000):
        digest.update(canonical_json(doc) + b"\n")
        count += 1
    return count, digest.hexdigest()


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
        wc = WriteConcern(
            w="majority" if s.mongo_write_concern == "majority" else 1, j=s.mongo_journal
        )
        db = client[s.mongo_db]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            enable_auto_commit=False,
            group_id=None,
            **kafka_client_options(s),
        )
        await consumer.start()
        result = ReplayResult()
        started = time.perf_counter()
        try:
            state = db[REPLAY_STATE_COLLECTION].with_options(write_concern=wc)
            target = db[REPLAY_COLLECTION].with_options(write_concern=wc)
            tps = await self._partitions(consumer)
            reader = self._reader() if since is None else None
            positions = await self._start(
                db, state, target, consumer, tps, since, fresh, result, archived=reader is not None
            )
            # no fence, no checkpoints (the live ones stand); only authentic control events
            store = ChainedStore(target, control_keys=self._control_keys)
            if reader is not None and not result.resumed:
                await self._from_archive(reader, consumer, tps, positions, store, result)
                await state.update_one(
                    {"_id": STATE_ID},
                    {
                        "$set": {
                            "phase": "running",
                            "positions": {str(p): o for p, o in positions.items()},
                        }
                    },
                )
            await self._catch_up(consumer, tps, positions, store, state, result)
            result.rebuild_seconds = time.perf_counter() - started
            if swap:
                topic = await _topic_extent(consumer, tps)
                await self._swap_if_complete(
                    client, db, state, target, consumer, tps, positions, store, topic, result
                )
            else:
                await state.update_one({"_id": STATE_ID}, {"$set": {"phase": "caught-up"}})
        finally:
            result.seconds = time.perf_counter() - started
            await consumer.stop()
            await client.close()
        return result

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        topic = self._settings.topic_events
        await consumer.topics()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        return tps

    async def _start(
        self,
        db: AsyncDatabase[dict[str, Any]],
        state: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        since: datetime | None,
        fresh: bool,
        result: ReplayResult,
        *,
        archived: bool = False,
    ) -> dict[int, int]:
        saved = await state.find_one({"_id": STATE_ID})
        if saved and saved.get("phase") == "running" and not fresh:
            result.resumed = True
            return {int(p): int(o) for p, o in saved["positions"].items()}
        await target.drop()
        await target.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
        await ensure_chain_index(target)
        if since is None:
            starts = await consumer.beginning_offsets(tps)
        else:
            await self._copy_before(db[EVENTS_COLLECTION], target, since)
            found = await consumer.offsets_for_times(
                {tp: int(since.timestamp() * 1000) for tp in tps}
            )
            ends = await consumer.end_offsets(tps)
            starts = {tp: (found[tp].offset if found.get(tp) else ends[tp]) for tp in tps}
        positions = {tp.partition: int(starts[tp]) for tp in tps}
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
        reader = ArchiveReader(self._settings.archive_path())
        return reader if reader.partitions(self._settings.topic_events) else None

    async def _from_archive(
        self,
        reader: ArchiveReader,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        positions: dict[int, int],
        store: ChainedStore,
        result: ReplayResult,
    ) -> None:
        """Step 0: every archived record of the events topic, then where the topic takes over."""
        topic = self._settings.topic_events
        live = {tp.partition: tp for tp in tps}
        for partition in reader.partitions(topic):
            entries = reader.entries(topic, partition)
            result.archive_epochs += len({e.epoch for e in entries})
            tp = live.get(partition)
            if tp is not None:
                held = reader.state(topic, partition)
                start = decide(held, await probe(consumer, tp, held))
                if not start.new_epoch:  # the topic continues the archive's latest epoch
                    positions[partition] = max(positions[partition], start.offset)
            chunk: list[Record] = []
            for record in reader.records(entries):
                chunk.append(record)
                if len(chunk) >= self._batch_size:
                    await self._apply(chunk, store, result)
                    chunk = []
            if chunk:
                await self._apply(chunk, store, result)

    async def _apply(
        self, records: list[Record], store: ChainedStore, result: ReplayResult
    ) -> None:
        batch = decode_batch(records, self._limits, self._settings.max_event_bytes, self._gate)
        written = await store.insert(batch.documents)
        result.records += len(records)
        result.archived_records += len(records)
        result.inserted += written.inserted
        result.duplicates += written.duplicates
        result.rejected += len(batch.rejects)
        if self._on_progress is not None:
            self._on_progress(result.records, result.records)

    async def _copy_before(
        self,
        live: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        since: datetime,
    ) -> None:
        chunk: list[dict[str, Any]] = []
        async for doc in live.find({"received_at": {"$lt": since}}).batch_size(1000):
            chunk.append(doc)
            if len(chunk) >= self._batch_size:
                await target.insert_many(chunk, ordered=True)
                chunk = []
        if chunk:
            await target.insert_many(chunk, ordered=True)

    async def _catch_up(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        positions: dict[int, int],
        store: ChainedStore,
        state: AsyncCollection[dict[str, Any]],
        result: ReplayResult,
    ) -> None:
        """Replay until every partition reaches the end offsets taken now."""
        ends = await true_end_offsets(consumer, tps)
        total = result.records + sum(max(0, ends[p] - positions[p]) for p in ends)
        for tp in tps:
            consumer.seek(tp, positions[tp.partition])
        while any(positions[p] < ends[p] for p in ends):
            records = await self._fetch(consumer, ends)
            if not records:  # offset gaps (compaction, transactions) below the end
                for tp in tps:
                    if await consumer.position(tp) >= ends[tp.partition]:
                        positions[tp.partition] = max(positions[tp.partition], ends[tp.partition])
                continue
            batch = decode_batch(
                records, self._limits, self._settings.max_event_bytes, self._gate
            )  # forged control events are skipped, as the live run dead-lettered them
            written = await store.insert(batch.documents)
            result.records += len(records)
            result.inserted += written.inserted
            result.duplicates += written.duplicates
            result.rejected += len(batch.rejects)  # already dead-lettered by the live run
            for (_, partition), next_offset in batch.committable().items():
                positions[partition] = max(positions[partition], next_offset)
            await state.update_one(
                {"_id": STATE_ID},
                {"$set": {"positions": {str(p): o for p, o in positions.items()}}},
            )
            if self._on_progress is not None:
                self._on_progress(result.records, total)
        for tp in tps:  # records fetched past ``ends`` were dropped: re-read them later
            consumer.seek(tp, positions[tp.partition])

    async def _fetch(self, consumer: AIOKafkaConsumer, ends: dict[int, int]) -> list[Record]:
        """Up to ``batch_size`` records below ``ends`` (fetches are often small)."""
        records: list[Record] = []
        timeout = 1000
        while len(records) < self._batch_size:
            fetched = await consumer.getmany(
                timeout_ms=timeout, max_records=self._batch_size - len(records)
            )
            if not fetched:
                break
            for tp, messages in fetched.items():
                for m in messages:
                    if m.offset >= ends[tp.partition]:
                        continue  # beyond this catch-up's end: the next one takes it
                    records.append(
                        Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value or b"")
                    )
            timeout = 20  # something arrived: top up only with what is ready
        return records

    async def _swap_if_complete(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        db: AsyncDatabase[dict[str, Any]],
        state: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        positions: dict[int, int],
        store: ChainedStore,
        topic: dict[int, tuple[int, int]],
        result: ReplayResult,
    ) -> None:
        """Steps 3-6: verify, fence, catch up, check coverage, then swap or refuse."""
        live = db[EVENTS_COLLECTION]
        # The bulk of the verification runs while live writers go on; ``to_end`` waits
        # for the fence (a live checkpoint may sign events the rebuild has not reached).
        reports = {t: await self._verify(target, t, None) for t in await _tenants(target)}
        refusal = _broken(reports)
        if refusal is None:
            fenced_until = await self._fence(state, up=True)
            fenced_at = mark = time.perf_counter()

            def lap(phase: str) -> None:
                nonlocal mark
                now = time.perf_counter()
                result.fence_phases[phase] = round(now - mark, 3)
                mark = now

            try:
                await _sleep(self._grace)
                lap("grace")
                await self._catch_up(consumer, tps, positions, store, state, result)
                lap("catch-up")
                result.live_count = await live.count_documents({})
                result.replay_count = await target.count_documents({})
                refusal = await self._coverage(live, target, tps, topic)
                lap("coverage")
                if refusal is None:
                    for tenant in await _tenants(target):
                        reports[tenant] = await self._verify(target, tenant, reports.get(tenant))
                    refusal = _broken(reports)
                    lap("verify tail")
                if refusal is None and fenced_until and datetime.now(UTC) >= fenced_until:
                    refusal = (
                        f"the checks outlasted the {self._fence_seconds:.0f} s fence, "
                        "so live writers may have resumed"
                    )
                if refusal is None:
                    await self._fence(state, up=True, bump=False)  # a full deadline for the rename
                    await client.admin.command(
                        "renameCollection",
                        f"{self._settings.mongo_db}.{REPLAY_COLLECTION}",
                        to=f"{self._settings.mongo_db}.{EVENTS_COLLECTION}",
                        dropTarget=True,
                    )
                    lap("rename")
                    result.swapped = True
            finally:
                await self._fence(state, up=False)
                result.fenced_seconds = time.perf_counter() - fenced_at
        result.reports = [reports[t] for t in sorted(reports)]
        if refusal is not None:
            result.refusal = (
                f"replay refused: {refusal}; live store untouched, "
                f"rebuilt copy kept in {REPLAY_COLLECTION}"
            )
        phase = "done" if result.swapped else "refused"
        await state.update_one(
            {"_id": STATE_ID}, {"$set": {"phase": phase, "refusal": result.refusal}}
        )

    async def _coverage(
        self,
        live: AsyncCollection[dict[str, Any]],
        target: AsyncCollection[dict[str, Any]],
        tps: list[TopicPartition],
        topic: dict[int, tuple[int, int]],
    ) -> str | None:
        """What the rebuilt store lacks of the live one (compared by tenant, seq, hash)."""
        short: list[str] = []
        for tenant in await _tenants(live):
            live_seq, live_hash = await derive_head(live, tenant)
            stored = await live.count_documents({"tenant": tenant})
            rebuilt = await target.count_documents({"tenant": tenant})
            at_head = (
                await target.find_one({"tenant": tenant, "seq": live_seq}, {"hash": 1})
                if live_seq
                else None
            )
            where = self._where(tenant, tps, topic)
            if (live_seq and at_head is None) or rebuilt < stored:
                short.append(
                    f"tenant {tenant} has {stored} stored events, the topic rebuilt {rebuilt}"
                    + (f" ({where})" if where else "")
                )
            elif live_seq and at_head is not None and at_head.get("hash") != live_hash:
                short.append(
                    f"tenant {tenant}'s rebuilt chain differs from the stored one at seq "
                    f"{live_seq}" + (f" ({where})" if where else "")
                )
        if not short:
            return None
        rest = len(short) - 3
        missing = "" if tps else f"; topic {self._settings.topic_events} does not exist"
        return "; ".join(short[:3]) + (f"; and {rest} more tenants" if rest > 0 else "") + missing

    def _where(
        self, tenant: str, tps: list[TopicPartition], topic: dict[int, tuple[int, int]]
    ) -> str:
        """Where ``tenant``'s events live in the topic, as far as the broker says."""
        name = self._settings.topic_events
        if not tps:
            return ""  # said once, after every tenant
        parts = [tp.partition for tp in tps]
        partition = DefaultPartitioner()(tenant.encode(), parts, parts)
        first, end = topic.get(partition, (0, 0))
        return f"topic {name} starts at offset {first} of partition {partition}, ends at {end}"

    async def _fence(
        self, state: AsyncCollection[dict[str, Any]], *, up: bool, bump: bool = True
    ) -> datetime | None:
        until = datetime.now(UTC) + timedelta(seconds=self._fence_seconds) if up else None
        await state.update_one(
            {"_id": FENCE_ID},
            {"$set": {"until": until}, "$inc": {"generation": 1 if bump else 0}},
            upsert=True,
        )
        return until

    async def _verify(
        self, events: AsyncCollection[dict[str, Any]], tenant: str, before: Report | None
    ) -> Report:
        """Verify ``tenant``'s chain in ``events``: all of it (``before`` is None,
        not to the end) or, under the fence, on from where ``before`` stopped to
        the end (every signed checkpoint reached)."""
        key = checkpoint_keys(self._settings)  # current + retired, by key id
        checkpoints = events.database[CHECKPOINTS_COLLECTION]
        cps = [c async for c in checkpoints.find({"tenant": tenant})]
        start, prev = (before.head_seq + 1, before.head_hash) if before else (1, GENESIS)
        cursor = events.find({"tenant": tenant, "seq": {"$gte": start}}).sort(
            [("seq", 1), ("_id", 1)]
        )
        docs = aiter(cursor.batch_size(1000))
        if before is None:
            return await verify_chain(tenant, docs, cps, key, to_end=False)
        if not before.ok:
            return before
        tail = await verify_chain(tenant, docs, cps, key, start_seq=start, prev_hash=prev)
        if tail.checked == 0 and tail.ok:
            tail.head_seq, tail.head_hash = before.head_seq, before.head_hash
        tail.checked += before.checked
        tail.erased += before.erased
        tail.corrected += before.corrected
        return tail


async def _tenants(events: AsyncCollection[dict[str, Any]]) -> list[str]:
    return sorted(await events.distinct("tenant"))


def _broken(reports: dict[str, Report]) -> str | None:
    """The first tenant whose rebuilt chain does not verify, as a clause."""
    for tenant in sorted(reports):
        r = reports[tenant]
        if not r.ok:
            return (
                f"tenant {tenant}'s rebuilt chain does not verify at seq {r.first_bad_seq}: "
                f"{r.reason} ({r.detail})"
            )
    return None


async def _topic_extent(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition]
) -> dict[int, tuple[int, int]]:
    """(first offset, end offset) of every partition, for the refusal line."""
    if not tps:
        return {}
    first = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    return {tp.partition: (int(first[tp]), int(ends[tp])) for tp in tps}


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
