"""The chain step: give each new event its tenant seq and hash, then write it.

``ChainedStore`` implements the pipeline's ``Store`` interface, so the
pipeline's order (decode → chain + write → invalidate → commit) and its
retry-the-whole-batch policy stay unchanged.

Per batch, in partition order (a tenant lives on one partition):

1. swap fence: while ``auditstream replay`` swaps collections, writes wait
   (:class:`SwapInProgress` makes the pipeline back off and retry);
2. the head (highest seq and its hash) of every tenant in the batch, derived
   from the stored events and cached per worker. A stale cache cannot fork the
   chain: the UNIQUE ``(tenant, seq)`` index rejects the insert and the head is
   derived again;
3. seal each document (seq, content_hash, hash) and ``insert_many(ordered=True)``.
   A duplicate ``_id`` (= ``event_key(tenant, id)``) means the tenant already
   stored an event with that id: with the same content hash it is a redelivery
   (a duplicate: it keeps its original seq and hash); with another content it is
   a conflict, returned in ``WriteResult.conflicts`` for the pipeline to
   dead-letter. Either way it is skipped and the rest is re-sealed from the
   head. A duplicate ``(tenant, seq)`` means another writer moved the head:
   derive, re-seal, go on. Any other error drops the cached heads and fails the
   batch (retried whole);
4. apply control events (corrections/erasures), idempotently — not the
   conflicting ones, which were not stored;
5. checkpoint the tenants that are due.

Why no ``$in`` pre-check of the batch ids: SecantusDB answers ``_id $in`` for
1,000 ids in seconds; duplicate-key errors find the same events for free.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from audit_events.chain import (
    GENESIS,
    control_keys,
    load_private_key,
    seal,
)
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION, REPLAY_STATE_COLLECTION
from audit_events.store_adapter import chain_head
from audit_events.store_adapter import ensure_chain_index as _ensure_chain_index
from stream_processor.checkpoints import Checkpointer, Publish, ensure_checkpoint_topic
from stream_processor.control import ControlApplier, Keys, control_target
from stream_processor.sinks import DUPLICATE_KEY, Invalidator, WriteResult, is_duplicate_id

log = logging.getLogger("auditstream.processor.chain")
FENCE_ID = "fence"


class SwapInProgress(Exception):
    """``auditstream replay`` is swapping collections; the batch is retried later."""


async def ensure_chain_index(collection: AsyncCollection[dict[str, Any]]) -> None:
    await _ensure_chain_index(collection)


async def derive_head(collection: AsyncCollection[dict[str, Any]], tenant: str) -> tuple[int, str]:
    """Highest stored seq of ``tenant`` and its hash (O(log n) index probes)."""
    head = await chain_head(collection, tenant, {"seq": 1, "hash": 1})
    return (0, GENESIS) if head is None else (int(head["seq"]), str(head["hash"]))


class ChainedStore:
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        *,
        state: AsyncCollection[dict[str, Any]] | None = None,
        checkpointer: Checkpointer | None = None,
        invalidator: Invalidator | None = None,
        control_keys: Keys | None = None,
    ) -> None:
        self._coll = collection
        self._state = state  # replay_state: where the swap fence lives (None: no fence)
        self._checkpointer = checkpointer
        self._invalidator = invalidator
        # Control public keys by key id: only authentic control events are applied.
        self._control = ControlApplier(collection, control_keys or {})
        self._heads: dict[str, tuple[int, str]] = {}
        self._fence_generation: object = None
        self._seeded = False  # stored heads adopted by the checkpointer (first timer tick)

    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        if not documents:
            return WriteResult(0, 0)
        await self._check_fence()
        try:
            result = await self._chain_and_insert(documents)
        except Exception:
            self._heads.clear()  # derive again on the retry
            raise
        conflicting = {id(d) for d in result.conflicts}
        await self._apply_controls([d for d in documents if id(d) not in conflicting])
        if self._checkpointer is not None:
            touched = {d["tenant"] for d in documents}
            heads = {t: h for t, h in self._heads.items() if t in touched}
            await self._checkpointer.after_batch(heads)
        return result

    async def checkpoint_idle(self) -> int:
        """Checkpoint the heads that moved and then stayed idle (the processor's timer).

        The first call also adopts every stored head that no checkpoint covers
        (left unsigned by a worker that died), so those are signed too.
        """
        if self._checkpointer is None:
            return 0
        if not self._seeded:
            tenants = sorted(await self._coll.distinct("tenant"))
            heads = {t: await derive_head(self._coll, t) for t in tenants}
            adopted = await self._checkpointer.seed(heads)
            if adopted:
                log.info("%d stored chain heads had no checkpoint; signing them", adopted)
            self._seeded = True
        return await self._checkpointer.idle()

    async def _check_fence(self) -> None:
        if self._state is None:
            return
        fence = await self._state.find_one({"_id": FENCE_ID})
        generation = fence.get("generation") if fence else None
        if generation != self._fence_generation:
            self._heads.clear()  # the collection may have been swapped
            self._fence_generation = generation
        until = fence.get("until") if fence else None
        if isinstance(until, datetime):
            if until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
            if until > datetime.now(UTC):
                raise SwapInProgress("replay is swapping collections; retrying")

    async def _chain_and_insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        todo = list(documents)
        inserted = duplicates = 0
        conflicts: list[dict[str, Any]] = []
        while todo:
            for tenant in {d["tenant"] for d in todo} - self._heads.keys():
                self._heads[tenant] = await derive_head(self._coll, tenant)
            working = dict(self._heads)
            for doc in todo:
                seq, prev = working[doc["tenant"]]
                working[doc["tenant"]] = (seq + 1, seal(doc, seq + 1, prev))
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
                        conflicts.append(todo[index])
                    todo = todo[index + 1 :]
                else:  # another writer took this seq: our head is stale
                    self._heads.pop(todo[index]["tenant"], None)
                    todo = todo[index:]
                continue
            inserted += len(todo)
            self._heads.update({d["tenant"]: (d["seq"], d["hash"]) for d in todo})
            todo = []
        return WriteResult(inserted, duplicates, tuple(conflicts))

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

    async def _apply_controls(self, documents: list[dict[str, Any]]) -> None:
        # Redelivered control events are applied again: a no-op if they were.
        changed = []
        for doc in documents:
            if control_target(doc) is not None:
                before = await self._control.apply(doc)
                if before is not None:
                    changed.append(before)
        if changed and self._invalidator is not None:
            try:  # the targets' own scopes (object history) are stale now
                await self._invalidator.bump(changed)
            except Exception as exc:
                log.warning("cache invalidation after a control event failed: %s", exc)


def topic_publisher(topic: Any) -> Publish:
    """Publish through a Faust topic and wait for the broker's acknowledgement."""

    async def publish(key: bytes, value: bytes) -> None:
        fut = await topic.send(key=key, value=value)
        await fut

    return publish


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


async def open_chain_store(
    settings: AuditSettings,
    collection: AsyncCollection[dict[str, Any]],
    publish: Publish | None,
    invalidator: Invalidator | None = None,
) -> ChainedStore:
    """The live processor's store: unique chain index, fence, checkpoints if keyed.

    Raises :class:`OldLayout` when the store still needs ``auditstream migrate-ids``.
    """
    await check_layout(collection)
    await ensure_chain_index(collection)
    database = collection.database
    checkpointer = None
    if settings.checkpoint_signing_key is not None and publish is not None:
        await ensure_checkpoint_topic(settings)
        checkpointer = Checkpointer(
            load_private_key(settings.checkpoint_signing_key.get_secret_value()),
            publish,
            database[CHECKPOINTS_COLLECTION].with_options(write_concern=collection.write_concern),
            every_events=settings.checkpoint_every_events,
            every_seconds=settings.checkpoint_every_seconds,
        )
    else:
        log.warning("AUDITSTREAM_CHECKPOINT_SIGNING_KEY is not set: chains are not checkpointed")
    return ChainedStore(
        collection,
        state=database[REPLAY_STATE_COLLECTION],
        checkpointer=checkpointer,
        invalidator=invalidator,
        control_keys=control_keys(settings),
    )
