"""The purge job: per-tenant retention of the hot store (issue 16; docs/archive.md).

``auditstream purge`` deletes from MongoDB the events of each tenant with a
retention policy (:mod:`audit_events.retention`) received more than ``days``
ago, and only those the archive holds:

1. the candidates are a *prefix* of the tenant's chain: seq ``start..K`` where
   ``start`` follows the previous purge and K is the last seq before the first
   event received within the policy's days. The chain head is always kept (the
   processor derives the next seq from the highest stored one), so K < head;
2. the stored prefix must link (each ``hash`` chains from the previous one, from
   the previous marker's hash): the marker's hash is then the one the first kept
   event links to;
3. the archive must verify (its manifest chain and continuity; the segments of
   the events topic are read and each checked against its SHA-256), and every
   candidate must be found in it by (tenant, id). K shrinks to the last seq
   before the first event the archive lacks: nothing is purged before it is
   archived;
3. the tenant's log streams (:mod:`audit_events.streams`) must have delivered it:
   K is at most the lowest committed ``position`` of any of its destinations,
   enabled or paused (a paused one resumes from its position), and below the
   first seq of any pending dead-lettered batch (``auditstream streams redrive``
   re-reads those from the store). A deleted destination holds nothing (its
   document and dead letters are gone). The note says which one held K back;
5. stubs (``purged_events``) are written, then the marker (``retention_purges``:
   through seq K, hash of K, the segment holding K, the time), then the events
   are deleted in ascending seq ranges, then the tenant's cache generations are
   bumped (best effort). A crash anywhere repeats harmlessly at the next run;
   the verifier uses the marker and skips what is left at or below K.

Age is by ``received_at`` (the record's time in the log, which the chain hashes),
not the client-supplied ``occurred_at``: a client cannot age its own events out,
and the order of received times follows the chain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from audit_events.chain import GENESIS, links
from audit_events.retention import (
    PURGED_EVENTS_COLLECTION,
    PURGES_COLLECTION,
    policies,
    purge_marker,
)
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.storage import EVENTS_COLLECTION, event_key
from audit_events.store_adapter import seq_probes
from audit_events.streams import STREAM_DEAD_LETTERS_COLLECTION, STREAMS_COLLECTION
from stream_processor.archive.manifest import Entry
from stream_processor.archive.reader import ArchiveError, ArchiveReader
from stream_processor.archive.storage import ArchiveStorage, archive_storage
from stream_processor.archive.verify import verify_archive
from stream_processor.decode import record_event_id
from stream_processor.records import Record
from stream_processor.sinks import Invalidator, RedisInvalidator

log = logging.getLogger("auditstream.purge")
CHUNK = 5000
# Transient while an archiver writes (a segment before its entry, an append in flight).
_TRANSIENT = {"unlisted segment file", "torn last line"}


@dataclass
class PurgeResult:
    tenant: str
    days: int
    purged: int = 0
    through_seq: int = 0
    segment: str | None = None
    candidates: int = 0
    note: str | None = None  # why less (or nothing) was purged
    seconds: dict[str, float] | None = None  # per phase: store, archive, delete

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_note(self, note: str) -> None:
        self.note = note if self.note is None else f"{self.note}; {note}"


@dataclass(frozen=True)
class Archived:
    entry: Entry
    offset: int


def _record_id(rec: Record, tenant: str) -> str | None:
    """The stored id of an archived record of ``tenant`` (None: another tenant's, or none)."""
    if rec.value is None:
        return None
    try:
        data = orjson.loads(rec.value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("tenant") != tenant:
        return None
    event_id = data.get("id")
    if isinstance(event_id, str):
        return event_id
    if event_id is None and isinstance(rec.timestamp_ms, int):
        return record_event_id(rec.partition, rec.offset, rec.timestamp_ms, rec.value)
    return None


def archived_ids(
    storage: ArchiveStorage, topic: str, tenant: str, wanted: set[str]
) -> dict[str, Archived]:
    """Where each of ``wanted`` is archived (those found); raises :class:`ArchiveError`
    when the archive does not verify (manifest chain, continuity, a segment's SHA-256)."""
    report = verify_archive(storage, read_segments=False)
    problems = [p for p in report.problems if p.kind not in _TRANSIENT]
    if problems:
        raise ArchiveError("; ".join(p.line() for p in problems[:3]))
    reader = ArchiveReader(storage)
    key = tenant.encode()
    found: dict[str, Archived] = {}
    for partition in reader.partitions(topic):
        for entry in reader.entries(topic, partition):
            if len(found) == len(wanted):
                return found
            for rec in reader.records([entry]):  # checks the segment's SHA-256
                if rec.key is not None and rec.key != key:
                    continue
                event_id = _record_id(rec, tenant)
                if event_id in wanted and event_id not in found:
                    found[event_id] = Archived(entry, rec.offset)
    return found


async def stream_hold(db: AsyncDatabase[dict[str, Any]], tenant: str) -> tuple[int, str] | None:
    """The highest seq the purge may delete without leaving a log stream a gap, and
    which destination (or dead-lettered batch) sets it; None: no destination holds any.

    Every destination of ``tenant`` counts, enabled or paused: it delivers (or will,
    once resumed) from ``position + 1``. A pending dead-lettered batch holds from its
    ``first_seq``: a redrive reads it from the store again.
    """
    hold: tuple[int, str] | None = None
    async for dest in db[STREAMS_COLLECTION].find(
        {"tenant": tenant}, {"position": 1, "enabled": 1, "name": 1}
    ):
        position = int(dest.get("position") or 0)
        if hold is None or position < hold[0]:
            state = "enabled" if dest.get("enabled", True) else "paused"
            why = f"stream {dest['_id']} ({state}) has not delivered seq {position + 1}"
            hold = (position, why)
    async for item in (
        db[STREAM_DEAD_LETTERS_COLLECTION].find({"tenant": tenant}).sort("first_seq", 1).limit(1)
    ):
        first = int(item.get("first_seq") or 1)
        if hold is None or first - 1 < hold[0]:
            why = (
                f"a dead-lettered batch of stream {item.get('stream_id')} from seq {first}"
                " awaits redrive"
            )
            hold = (first - 1, why)
    return hold


def _older(doc: dict[str, Any], cutoff: datetime) -> bool:
    at = doc.get("received_at")
    if not isinstance(at, datetime):
        return False
    return (at if at.tzinfo else at.replace(tzinfo=UTC)) < cutoff


def _links(prev: str, doc: dict[str, Any]) -> bool:
    try:
        return links(prev, str(doc.get("content_hash")), doc)
    except (ValueError, TypeError):  # not a hex digest: an edited document
        return False


async def _prefix(
    events: Any, tenant: str, start: int, last: int, projection: dict[str, int]
) -> AsyncIterator[dict[str, Any]]:
    """Seq ``start..last`` in order, one query per chunk (one batch each: no getMore,
    which some servers answer by scanning again)."""
    for lo, hi in _chunks(start, last):
        query = {"tenant": tenant, "seq": {"$gte": lo, "$lte": hi}}
        cursor = events.find(query, projection).sort("seq", 1).batch_size(CHUNK + 1)
        async for doc in cursor:
            yield doc


def _chunks(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    while lo <= hi:
        yield lo, min(hi, lo + CHUNK - 1)
        lo += CHUNK


async def purge_tenant(
    db: AsyncDatabase[dict[str, Any]],
    storage: ArchiveStorage,
    topic: str,
    tenant: str,
    days: int,
    *,
    now: datetime | None = None,
    invalidator: Invalidator | None = None,
) -> PurgeResult:
    """Purge ``tenant``'s events received more than ``days`` before ``now`` that the
    archive holds; see the module's docstring for the order of the steps."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    result = PurgeResult(tenant, days)
    events = db[EVENTS_COLLECTION]
    cutoff = now - timedelta(days=days)
    marker = await purge_marker(db, tenant)
    start = int(marker["through_seq"]) + 1 if marker else 1
    prev = str(marker["hash"]) if marker else GENESIS
    head = await events.find_one(
        {"tenant": tenant, "seq": {"$exists": True}}, {"seq": 1}, sort=[("seq", -1)]
    )
    if head is None:
        result.note = "no stored events"
        return result
    # the first event received within the policy, by binary search on the chain
    # index (received times follow seq); the walk below still stops at any young one
    _, exact = seq_probes(events, tenant, {"seq": 1, "received_at": 1})
    lo, hi = start, int(head["seq"])  # the head is never purged
    while lo < hi:  # point lookups (a range probe from a small seq scans on SecantusDB)
        mid = (lo + hi) // 2
        found = await exact(mid)
        if found is not None and _older(found, cutoff):
            lo = mid + 1
        else:  # young, or a gap: purge less, never more
            hi = mid
    last = lo - 1
    if last < start:
        result.note = "nothing older than the policy (the newest event is always kept)"
        return result
    # never past what a log stream has yet to deliver (it would hit a gap)
    hold = await stream_hold(db, tenant)
    if hold is not None and hold[0] < last:
        last = hold[0]
        result.add_note(f"held at seq {last}: {hold[1]}")
        if last < start:
            return result
    # the prefix start..last as stored: it must link, and be found in the archive
    docs: list[dict[str, Any]] = []
    projection = {"id": 1, "seq": 1, "hash": 1, "content_hash": 1, "received_at": 1, "targets": 1}
    async for doc in _prefix(events, tenant, start, last, projection):
        expected = start + len(docs)
        if not _older(doc, cutoff):
            last = expected - 1
            break
        if doc.get("seq") != expected or not _links(prev, doc):
            break
        docs.append(doc)
        prev = str(doc["hash"])
    if len(docs) < last - start + 1:
        result.add_note(f"the stored chain does not link at seq {start + len(docs)}: run verify")
    if not docs:
        return result
    result.candidates = len(docs)
    timings = {"store": time.perf_counter() - started}
    try:
        where = archived_ids(storage, topic, tenant, {str(d["id"]) for d in docs})
    except (ArchiveError, FileNotFoundError) as exc:
        result.add_note(f"the archive does not verify: {exc}")
        return result
    kept = 0
    for doc in docs:
        if str(doc["id"]) not in where:
            result.add_note(f"seq {doc['seq']} and later are not archived yet")
            break
        kept += 1
    docs = docs[:kept]
    timings["archive"] = time.perf_counter() - started - timings["store"]
    if not docs:
        return result
    await _purge(db, tenant, docs, where, now, marker, timings)
    timings["delete"] = time.perf_counter() - started - sum(timings.values())
    result.seconds = {k: round(v, 3) for k, v in timings.items()}
    result.purged = len(docs)
    result.through_seq = int(docs[-1]["seq"])
    result.segment = where[str(docs[-1]["id"])].entry.path
    if invalidator is not None:
        try:
            await invalidator.bump(
                [{"tenant": tenant, "targets": d.get("targets") or []} for d in docs]
            )
        except Exception as exc:  # Redis down: cached entries expire by their TTL
            log.warning("purge of %s: cache invalidation failed (%s)", tenant, exc)
    return result


async def _purge(
    db: AsyncDatabase[dict[str, Any]],
    tenant: str,
    docs: list[dict[str, Any]],
    where: dict[str, Archived],
    now: datetime,
    marker: dict[str, Any] | None,
    timings: dict[str, float],
) -> None:
    began = time.perf_counter()
    stubs = db[PURGED_EVENTS_COLLECTION]
    for i in range(0, len(docs), CHUNK):
        rows = []
        for doc in docs[i : i + CHUNK]:
            at = where[str(doc["id"])]
            rows.append(
                {
                    "_id": event_key(tenant, str(doc["id"])),
                    "tenant": tenant,
                    "seq": doc["seq"],
                    "segment": at.entry.path,
                    "partition": at.entry.partition,
                    "offset": at.offset,
                    "epoch": at.entry.epoch,
                    "purged_at": now,
                }
            )
        try:
            await stubs.insert_many(rows, ordered=False)
        except BulkWriteError as exc:  # a repeated run: stubs already there
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", ())):
                raise
    timings["stubs"] = time.perf_counter() - began
    last = docs[-1]
    at = where[str(last["id"])]
    await db[PURGES_COLLECTION].replace_one(
        {"_id": tenant},
        {
            "_id": tenant,
            "tenant": tenant,
            "through_seq": last["seq"],
            "hash": last["hash"],
            "purged_at": now,
            "received_before": last.get("received_at"),
            "segment": at.entry.path,
            "partition": at.entry.partition,
            "offset": at.offset,
            "epoch": at.entry.epoch,
            "purged": int(marker.get("purged", 0) if marker else 0) + len(docs),
        },
        upsert=True,
    )
    events = db[EVENTS_COLLECTION]
    for lo, hi in _chunks(int(docs[0]["seq"]), int(last["seq"])):
        await events.delete_many({"tenant": tenant, "seq": {"$gte": lo, "$lte": hi}})


async def purge_all(
    db: AsyncDatabase[dict[str, Any]],
    storage: ArchiveStorage,
    topic: str,
    *,
    tenant: str | None = None,
    now: datetime | None = None,
    invalidator: Invalidator | None = None,
) -> list[PurgeResult]:
    """One purge pass over every tenant with a policy (or just ``tenant``)."""
    out = []
    for name, days in sorted((await policies(db)).items()):
        if tenant is None or name == tenant:
            out.append(
                await purge_tenant(db, storage, topic, name, days, now=now, invalidator=invalidator)
            )
    return out


async def run_purge(
    settings: AuditSettings, *, tenant: str | None = None, now: datetime | None = None
) -> list[PurgeResult]:
    """One pass with the configured MongoDB (majority, journaled), archive and Redis."""
    from pymongo import AsyncMongoClient
    from pymongo.write_concern import WriteConcern
    from redis.asyncio import Redis

    from audit_events.cache_keys import cache_namespace
    from audit_events.connections import redis_tls_options

    settings.require("mongo_uri")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, **mongo_client_options(settings)
    )
    redis = (
        Redis.from_url(settings.redis_url, socket_timeout=2.0, **redis_tls_options(settings))
        if settings.redis_url
        else None
    )
    try:
        db = client.get_database(settings.mongo_db, write_concern=WriteConcern("majority", j=True))
        invalidator = (
            None
            if redis is None
            else RedisInvalidator(
                redis, settings.cache_ttl_seconds, namespace=cache_namespace(settings)
            )
        )
        return await purge_all(
            db,
            archive_storage(settings),
            settings.topic_events,
            tenant=tenant,
            now=now,
            invalidator=invalidator,
        )
    finally:
        await client.close()
        if redis is not None:
            await redis.aclose()
