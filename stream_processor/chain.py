"""Step 5: seal each new event into its tenant's chain and insert the batch, in order.

:class:`ChainWriter` is the real :class:`Writer` (the seam the pipeline's unit
tests fake); :class:`Write` is the step the pipeline runs, which puts the
writer's result on the batch. Per batch, in partition order (a tenant lives on
one partition):

- the head (highest seq and its hash) of every tenant in the batch, derived
  from the stored events and cached per worker. A stale cache cannot fork the
  chain: the UNIQUE ``(tenant, seq)`` index rejects the insert and the head is
  derived again. The swap fence (Step 4) forgets the cache when replay swaps
  the collection;
- seal each document (seq, content_hash, hash) and ``insert_many(ordered=True)``.
  A duplicate ``_id`` (= ``event_key(tenant, id)``) means the tenant already
  stored an event with that id: with the same content hash it is a redelivery
  (a duplicate: it keeps its original seq and hash); with another content it is
  a conflict, returned in ``WriteResult.conflicts`` for the pipeline to
  dead-letter (Step 8). Either way it is skipped and the rest is re-sealed from
  the head. A duplicate ``(tenant, seq)`` means another writer moved the head:
  derive, re-seal, go on. Any other error drops the cached heads and fails the
  batch (retried whole, which is safe: every stored event is then a duplicate).

Why no ``$in`` pre-check of the batch ids: SecantusDB answers ``_id $in`` for
1,000 ids in seconds; duplicate-key errors find the same events for free.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from audit_events.chain import GENESIS, seal
from audit_events.store_adapter import chain_head
from audit_events.store_adapter import ensure_chain_index as _ensure_chain_index
from stream_processor.metrics import ProcessorMetrics
from stream_processor.records import Batch, WriteResult

log = logging.getLogger("auditstream.processor.chain")
DUPLICATE_KEY = 11000
DUPLICATE_ID_CONFLICT = "duplicate id with different content"


class Writer(Protocol):
    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        """Insert-only write of ``documents``; returns once durable.

        An event whose (tenant, id) is already stored with the same content is a
        duplicate (redelivery: counted, changes nothing); with a different
        content it is a conflict, returned (by position) for the caller to
        dead-letter. Raises on any other error; the caller then retries the
        whole batch, which is safe because it is idempotent.
        """


async def ensure_chain_index(collection: AsyncCollection[dict[str, Any]]) -> None:
    """The unique ``(tenant, seq)`` index, partial only where the server plans partial
    indexes (a store capability: :mod:`audit_events.store_adapter`)."""
    await _ensure_chain_index(collection)


async def derive_head(collection: AsyncCollection[dict[str, Any]], tenant: str) -> tuple[int, str]:
    """Highest stored seq of ``tenant`` and its hash (one backward index lookup on
    MongoDB, O(log n) ascending probes on SecantusDB: :func:`chain_head`)."""
    head = await chain_head(collection, tenant, {"seq": 1, "hash": 1})
    return (0, GENESIS) if head is None else (int(head["seq"]), str(head["hash"]))


class ChainWriter:
    """Seals and inserts into ``collection`` (unique ``_id`` and ``(tenant, seq)``)."""

    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._coll = collection
        self._heads: dict[str, tuple[int, str]] = {}

    def forget_heads(self) -> None:
        """Derive every head again at the next write (the collection was swapped)."""
        self._heads.clear()

    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        if not documents:
            return WriteResult(0, 0)
        try:
            result = await self._chain_and_insert(documents)
        except Exception:
            self._heads.clear()  # derive again on the retry
            raise
        return result

    async def _chain_and_insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        start = 0  # documents[:start] are stored, duplicates or conflicts
        inserted = duplicates = 0
        conflicts: list[int] = []
        while start < len(documents):
            todo = documents[start:]
            for tenant in {d["tenant"] for d in todo} - self._heads.keys():
                self._heads[tenant] = await derive_head(self._coll, tenant)
            working = dict(self._heads)
            for doc in todo:
                seq, prev = working[doc["tenant"]]
                # decode (Step 2) hashed the event it validated: no second validation
                hashed = doc.get("content_hash")
                working[doc["tenant"]] = (seq + 1, seal(doc, seq + 1, prev, content_hash=hashed))
            try:
                await self._coll.insert_many(todo, ordered=True)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors") or []
                stored = todo[: exc.details.get("nInserted", 0)]
                inserted += len(stored)
                for doc in stored:
                    self._heads[doc["tenant"]] = (doc["seq"], doc["hash"])
                first = errors[0] if errors else {}
                if exc.details.get("writeConcernErrors") or first.get("code") != DUPLICATE_KEY:
                    raise
                index = int(first["index"])
                if is_duplicate_id(first):  # (tenant, id) stored before: keeps its seq
                    if await self._same_content(todo[index]):
                        duplicates += 1
                    else:
                        conflicts.append(start + index)
                    start += index + 1
                else:  # another writer took this seq: our head is stale
                    self._heads.pop(todo[index]["tenant"], None)
                    start += index
                continue
            inserted += len(todo)
            self._heads.update({d["tenant"]: (d["seq"], d["hash"]) for d in todo})
            start = len(documents)
        touched = {d["tenant"] for d in documents}
        heads = {t: h for t, h in self._heads.items() if t in touched}
        return WriteResult(inserted, duplicates, tuple(conflicts), heads)

    async def _same_content(self, doc: dict[str, Any]) -> bool:
        """Whether the stored event with ``doc``'s ``_id`` has ``doc``'s content hash.

        Yes: a redelivery or replay (a duplicate). No: the tenant reused an id
        for another event (a conflict, dead-lettered by the pipeline). An
        erased event keeps its content hash, so its redelivery is a duplicate too.
        """
        stored = await self._coll.find_one({"_id": doc["_id"]}, projection={"content_hash": 1})
        if stored is None:  # gone since the insert failed: retry the batch
            raise RuntimeError(f"event {doc['_id']} was a duplicate key but is not stored")
        return bool(stored.get("content_hash") == doc["content_hash"])


class Write:
    """Step 5 as the pipeline runs it: write the batch's documents, record the outcome.

    Sets ``batch.written``; every conflict goes to ``batch.rejects`` with the
    record it was decoded from (dead-lettered in Step 8, before the commit).
    """

    def __init__(self, writer: Writer, metrics: ProcessorMetrics | None = None) -> None:
        self._writer = writer
        self._metrics = metrics or ProcessorMetrics()

    async def __call__(self, batch: Batch) -> None:
        m = self._metrics
        started = time.perf_counter()
        result = await self._writer.insert(batch.documents)
        m.write_seconds.observe(time.perf_counter() - started)
        m.stored.inc(result.inserted)
        m.duplicates.inc(result.duplicates)
        batch.written = result
        if result.conflicts:
            for index in result.conflicts:
                record, _ = batch.accepted[index]
                batch.rejects.append((record, DUPLICATE_ID_CONFLICT))
            m.duplicate_id_conflicts.inc(len(result.conflicts))
            log.warning(
                "%d event(s) reuse an id of their tenant with different content: dead-lettered",
                len(result.conflicts),
            )


def is_duplicate_id(error: dict[str, Any]) -> bool:
    """A write error that means "this (tenant, id) is already stored".

    Whether it is a redelivery or a conflict depends on the stored content hash.
    A duplicate key on any *other* unique index is a real conflict and fails the batch.
    """
    if error.get("code") != DUPLICATE_KEY:
        return False
    pattern = error.get("keyPattern")
    if pattern is not None:
        return dict(pattern) == {"_id": 1}
    return " index: _id_ " in str(error.get("errmsg", ""))


class OldLayout(Exception):
    """The store holds documents written before event ids were per tenant."""


async def check_layout(collection: AsyncCollection[dict[str, Any]]) -> None:
    """Refuse a store that ``auditstream migrate-ids`` has not migrated yet.

    Old documents have ``_id`` = the client id and no ``id`` field; writing next
    to them would store a redelivered old event a second time (its new ``_id``
    differs). One point read: the collection's first document in natural order
    (the migration rewrites old documents, which moves them to the end).
    """
    first = await collection.find_one({}, projection={"id": 1})
    if first is not None and "id" not in first:
        raise OldLayout(
            "the events collection holds documents of the layout before ids were per"
            " tenant: run `auditstream migrate-ids` first"
        )
