"""Step 5 (``ChainWriter``: seal + ordered insert) and its duplicate-key recovery,
against a small in-memory collection; with Step 6 for conflicting control events.

A duplicate ``_id`` (= tenant/id) is a redelivery when the stored content hash
is the same, a conflict (returned for the DLQ, never stored, never applied) when
it differs; a duplicate ``(tenant, seq)`` means another writer moved the head.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo.errors import BulkWriteError

from audit_events.chain import CORRECTED_ACTION, key_id, links, public_key_b64, sign_control
from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from stream_processor.chain import ChainWriter, OldLayout, Write, check_layout
from stream_processor.control import ApplyControls, ControlApplier
from stream_processor.records import Batch, Record

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def doc(event_id: str, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    body = {"id": event_id, "tenant": tenant, "action": "invoice.update", "occurred_at": T0}
    return event_to_document(AuditEvent.model_validate({**body, **fields}), T0)


def _matches(stored: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, want in query.items():
        have = stored.get(key)
        if isinstance(want, dict) and "$gte" in want:
            if not isinstance(have, int) or have < want["$gte"]:
                return False
        elif isinstance(want, dict) and "$exists" in want:
            if (key in stored) != want["$exists"]:
                return False
        elif have != want:
            return False
    return True


class _Admin:
    async def command(self, name: str) -> dict[str, Any]:
        assert name == "buildInfo"
        return {"secantusVersion": "fake"}  # the store paths of the dev server


class _Client:
    admin = _Admin()


class _NoMarkers:
    """``retention_purges`` without a marker: the head probe starts at seq 1."""

    async def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Database:
    def __init__(self) -> None:
        self.client = _Client()

    def __getitem__(self, name: str) -> _NoMarkers:
        assert name == "retention_purges", name
        return _NoMarkers()


class FakeEvents:
    """Unique ``_id`` and unique ``(tenant, seq)``, ordered inserts, point/range reads."""

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.database = _Database()
        self.inserts = 0  # insert_many calls

    async def insert_many(self, documents: list[dict[str, Any]], ordered: bool) -> None:
        assert ordered
        self.inserts += 1
        for index, new in enumerate(documents):
            for old in self.docs:
                if old["_id"] == new["_id"]:
                    pattern = {"_id": 1}
                elif (old["tenant"], old.get("seq")) == (new["tenant"], new.get("seq")):
                    pattern = {"tenant": 1, "seq": 1}
                else:
                    continue
                error = {"index": index, "code": 11000, "keyPattern": pattern, "errmsg": "dup"}
                raise BulkWriteError({"writeErrors": [error], "nInserted": index})
            self.docs.append(dict(new))

    async def find_one(
        self,
        query: dict[str, Any],
        projection: dict[str, int] | None = None,
        sort: list[tuple[str, int]] | None = None,
    ) -> dict[str, Any] | None:
        found = [d for d in self.docs if _matches(d, query)]
        if sort:
            found.sort(key=lambda d: d[sort[0][0]])
        if not found:
            return None
        first = found[0]
        if projection:
            return {k: v for k, v in first.items() if k == "_id" or k in projection}
        return dict(first)

    async def update_one(self, query: dict[str, Any], update: dict[str, Any]) -> Any:
        self.updates.append(update)
        return type("Result", (), {"modified_count": 0})()

    async def update_many(self, query: dict[str, Any], update: dict[str, Any]) -> Any:
        return await self.update_one(query, update)

    def by_key(self, key: str) -> dict[str, Any]:
        return next(d for d in self.docs if d["_id"] == key)


def batch_of(documents: list[dict[str, Any]]) -> Batch:
    """A batch whose documents were decoded from records at offsets 0, 1, ..."""
    records = [Record("t", 0, i, 0, None, b"") for i in range(len(documents))]
    return Batch(records, accepted=list(zip(records, documents, strict=True)))


async def test_same_tenant_and_id_other_content_is_a_conflict_and_the_chain_goes_on() -> None:
    events = FakeEvents()
    store = ChainWriter(events)  # type: ignore[arg-type]
    assert (await store.insert([doc("a"), doc("b")])).inserted == 2
    other, same, nxt = doc("a", action="invoice.delete"), doc("a"), doc("c")
    result = await store.insert([other, same, nxt])
    assert (result.inserted, result.duplicates) == (1, 1)
    assert result.conflicts == (0,)  # its position, for the pipeline's DLQ
    assert events.by_key("acme/a")["action"] == "invoice.update"  # unchanged
    assert [(d["id"], d["seq"]) for d in events.docs] == [("a", 1), ("b", 2), ("c", 3)]
    assert events.by_key("acme/c")["hash"] == nxt["hash"]
    assert result.heads == {"acme": (3, nxt["hash"])}


async def test_a_duplicate_id_with_the_same_content_is_skipped_and_keeps_its_seq() -> None:
    events = FakeEvents()
    store = ChainWriter(events)  # type: ignore[arg-type]
    await store.insert([doc("a"), doc("b")])
    first_hash = events.by_key("acme/a")["hash"]
    again, new = doc("a"), doc("c")  # a redelivery of a, then a new event
    result = await store.insert([again, new])
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 1, ())
    assert [(d["id"], d["seq"]) for d in events.docs] == [("a", 1), ("b", 2), ("c", 3)]
    assert events.by_key("acme/a")["hash"] == first_hash  # the stored event is untouched
    assert events.inserts == 3  # one failed at a, one with the rest (c re-sealed)


async def test_a_duplicate_seq_derives_the_head_again_not_the_id_path() -> None:
    events = FakeEvents()
    store = ChainWriter(events)  # type: ignore[arg-type]
    await store.insert([doc("a")])
    # Another writer stored b at seq 2 behind this writer's back.
    other_head = "ab" * 32
    events.docs.append({**doc("b"), "seq": 2, "hash": other_head})
    result = await store.insert([doc("c"), doc("d")])
    assert (result.inserted, result.duplicates, result.conflicts) == (2, 0, ())
    assert [(d["id"], d["seq"]) for d in events.docs] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]
    c = events.by_key("acme/c")
    assert links(other_head, c["content_hash"], c)  # chained onto the other writer's head
    assert result.heads == {"acme": (4, events.by_key("acme/d")["hash"])}


async def test_write_step_dead_letters_a_conflict_with_the_record_it_came_from() -> None:
    events = FakeEvents()
    write = Write(ChainWriter(events))  # type: ignore[arg-type]
    await write(batch_of([doc("a")]))
    batch = batch_of([doc("b"), doc("a", action="invoice.delete"), doc("c")])
    await write(batch)
    assert batch.written is not None and batch.written.conflicts == (1,)
    assert [(r.offset, reason) for r, reason in batch.rejects] == [
        (1, "duplicate id with different content")
    ]
    assert [d["id"] for d in batch.stored_documents()] == ["b", "c"]


async def test_the_same_id_in_another_tenant_is_its_own_event() -> None:
    events = FakeEvents()
    store = ChainWriter(events)  # type: ignore[arg-type]
    await store.insert([doc("order-123")])
    result = await store.insert([doc("order-123", tenant="globex")])
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 0, ())
    assert [(d["_id"], d["seq"]) for d in events.docs] == [
        ("acme/order-123", 1),
        ("globex/order-123", 1),
    ]


async def test_a_stale_head_re_seals_after_a_duplicate_seq() -> None:
    events = FakeEvents()
    store = ChainWriter(events)  # type: ignore[arg-type]
    await store.insert([doc("a")])  # the store caches acme's head at seq 1
    writer = ChainWriter(events)  # type: ignore[arg-type]
    await writer.insert([doc("b")])  # another writer takes seq 2
    result = await store.insert([doc("c")])  # first try collides on (acme, 2)
    assert (result.inserted, result.duplicates, result.conflicts) == (1, 0, ())
    assert [(d["id"], d["seq"]) for d in events.docs] == [("a", 1), ("b", 2), ("c", 3)]
    assert events.docs[2]["hash"] != events.docs[1]["hash"]


def signed_control(key: Ed25519PrivateKey, new_action: str) -> dict[str, Any]:
    """A correction of event ``a`` with the API's proof (only those are applied)."""
    fields = {
        "id": "ctl",
        "tenant": "acme",
        "action": CORRECTED_ACTION,
        "occurred_at": "2026-01-01T00:00:00Z",
        "targets": [{"type": "audit_event", "id": "a"}],
        "actor": {"id": "admin", "type": "admin"},
        "description": "fix",
        "metadata": {"set": {"action": new_action}},
    }
    event = AuditEvent.model_validate(sign_control(key, fields))
    return event_to_document(event, T0)


async def test_a_conflicting_control_event_is_not_applied() -> None:
    key = Ed25519PrivateKey.generate()
    events = FakeEvents()
    keys = {key_id(public_key_b64(key)): key.public_key()}
    write = Write(ChainWriter(events))  # type: ignore[arg-type]
    controls = ApplyControls(ControlApplier(events, keys))  # type: ignore[arg-type]
    first = batch_of([doc("a"), signed_control(key, "x.y")])
    await write(first)
    await controls(first)
    applied = len(events.updates)
    assert applied == 1  # the stored control event was applied
    other = signed_control(key, "evil.z")  # authentic, but its id is taken in acme
    second = batch_of([other])
    await write(second)
    await controls(second)
    assert second.written is not None and second.written.conflicts == (0,)
    assert len(events.updates) == applied  # the conflicting control event changed nothing


async def test_a_store_of_the_old_layout_is_refused() -> None:
    events = FakeEvents()
    await check_layout(events)  # type: ignore[arg-type]  # empty: fine
    events.docs.append({"_id": "a", "tenant": "acme", "seq": 1})
    with pytest.raises(OldLayout, match="auditstream migrate-ids"):
        await check_layout(events)  # type: ignore[arg-type]
    events.docs[0] = doc("a")
    await check_layout(events)  # type: ignore[arg-type]
