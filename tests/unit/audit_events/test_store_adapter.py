"""The store adapter's seams: the chain head probe and the chain index, per server kind."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from audit_events.store_adapter import (
    CONSERVATIVE,
    MONGODB,
    SECANTUSDB,
    capabilities_from_build_info,
    capabilities_of,
    chain_head,
    chain_index_model,
    ensure_chain_index,
)

pytestmark = pytest.mark.unit


class FakeEvents:
    """The three query shapes the probes send, over a list of documents; records each."""

    def __init__(self, docs: list[dict[str, Any]], build_info: dict[str, Any] | None = None):
        self.docs = docs
        self.queries: list[tuple[dict[str, Any], Any]] = []
        self.created: list[Any] = []
        self.create_error: Exception | None = None
        self.build_info = build_info
        self.build_info_calls = 0
        self.database = self  # collection.database.client.admin.command(...)
        self.client = self
        self.admin = self
        self.markers: Any = FakeMarkers({})

    def __getitem__(self, name: str) -> Any:  # collection.database["retention_purges"]
        assert name == "retention_purges", name
        return self.markers

    async def command(self, name: str) -> dict[str, Any]:
        assert name == "buildInfo"
        self.build_info_calls += 1
        if self.build_info is None:
            raise ServerSelectionTimeoutError("no server")
        return self.build_info

    async def find_one(
        self, filter: dict[str, Any], projection: Any = None, sort: Any = None
    ) -> dict[str, Any] | None:
        self.queries.append((filter, sort))
        cond = filter["seq"]
        found = [
            d
            for d in self.docs
            if d["tenant"] == filter["tenant"]
            and isinstance(d.get("seq"), int)
            and (d["seq"] >= cond["$gte"] if isinstance(cond, dict) else d["seq"] == cond)
        ]
        found.sort(key=lambda d: d["seq"], reverse=sort == [("seq", -1)])
        return found[0] if found else None

    async def create_indexes(self, models: list[Any]) -> None:
        if self.create_error is not None:
            raise self.create_error
        self.created += models


def test_secantusdb_is_told_apart_by_build_info() -> None:
    assert capabilities_from_build_info({"version": "8.2.11", "secantusVersion": "0.7"}) is (
        SECANTUSDB
    )
    assert capabilities_from_build_info({"version": "7.0.14"}) is MONGODB
    assert not SECANTUSDB.backward_index_scan and not SECANTUSDB.partial_indexes
    assert MONGODB.backward_index_scan and MONGODB.partial_indexes


async def test_capabilities_are_detected_once_per_client_and_unknown_means_conservative() -> None:
    coll = FakeEvents([], build_info={"version": "7.0"})
    assert await capabilities_of(coll) is MONGODB
    assert await capabilities_of(coll) is MONGODB
    assert coll.build_info_calls == 1
    down = FakeEvents([], build_info=None)
    assert await capabilities_of(down) is CONSERVATIVE  # same results as MongoDB's path
    assert not CONSERVATIVE.backward_index_scan and not CONSERVATIVE.partial_indexes


CHAINS = [
    [],
    [1],
    list(range(1, 40)),
    [*range(1, 11), *range(15, 41)],  # a gap: a damaged chain
    list(range(2, 10)),  # seq 1 deleted
]


@pytest.mark.parametrize("seqs", CHAINS)
async def test_both_head_paths_find_the_same_event(seqs: list[int]) -> None:
    docs = [{"tenant": "acme", "seq": s, "hash": f"h{s}"} for s in seqs]
    docs += [{"tenant": "other", "seq": 99}, {"tenant": "acme"}, {"tenant": "acme", "seq": 0}]
    expected = f"h{max(seqs)}" if seqs else None

    prod = FakeEvents(docs)
    head = await chain_head(prod, "acme", {"seq": 1, "hash": 1}, MONGODB)
    assert (head or {}).get("hash") == expected
    assert prod.queries == [({"tenant": "acme", "seq": {"$gte": 1}}, [("seq", -1)])]

    dev = FakeEvents(docs)
    head = await chain_head(dev, "acme", {"seq": 1, "hash": 1}, SECANTUSDB)
    assert (head or {}).get("hash") == expected
    assert all(sort != [("seq", -1)] for _, sort in dev.queries)  # no backward index walk


async def test_head_path_follows_the_detected_server() -> None:
    docs = [{"tenant": "acme", "seq": s} for s in range(1, 9)]
    secantus = FakeEvents(docs, build_info={"secantusVersion": "0.7"})
    assert (await chain_head(secantus, "acme", {"seq": 1}) or {})["seq"] == 8
    assert len(secantus.queries) > 1
    mongodb = FakeEvents(docs, build_info={"version": "7.0"})
    assert (await chain_head(mongodb, "acme", {"seq": 1}) or {})["seq"] == 8
    assert len(mongodb.queries) == 1


def test_chain_index_is_partial_only_where_partial_indexes_are_planned() -> None:
    prod = chain_index_model(MONGODB).document
    dev = chain_index_model(SECANTUSDB).document
    for doc in (prod, dev):
        assert doc["name"] == "tenant_seq" and doc["unique"] is True
        assert list(doc["key"].items()) == [("tenant", 1), ("seq", 1)]
    assert prod["partialFilterExpression"] == {"seq": {"$exists": True}}
    assert "partialFilterExpression" not in dev
    assert "partialFilterExpression" not in chain_index_model(CONSERVATIVE).document


async def test_an_existing_chain_index_of_the_other_form_is_kept() -> None:
    coll = FakeEvents([])
    await ensure_chain_index(coll, SECANTUSDB)
    assert [m.document["name"] for m in coll.created] == ["tenant_seq"]
    coll.create_error = OperationFailure("Index already exists with different options", 85)
    await ensure_chain_index(coll, MONGODB)  # logged, not raised: the old index stays
    coll.create_error = OperationFailure("not authorized", 13)
    with pytest.raises(OperationFailure):
        await ensure_chain_index(coll, MONGODB)


async def test_a_collection_without_a_client_gets_the_conservative_paths() -> None:
    class Bare:  # a unit test's fake collection: no .database.client to ask
        pass

    assert await capabilities_of(Bare()) is CONSERVATIVE


class FakeMarkers:
    """``retention_purges``: one purge marker per tenant, by ``_id``."""

    def __init__(self, markers: dict[str, dict[str, Any]]) -> None:
        self.markers = markers

    async def find_one(self, filter: dict[str, Any], projection: Any = None) -> Any:
        return self.markers.get(filter["_id"])


async def test_head_probe_starts_after_the_purge_marker() -> None:
    """After a purge seq 1 is gone: the point lookups start at the marker's K + 1,
    never a range probe from seq 1 (which SecantusDB answers by sorting the tenant)."""
    docs = [{"tenant": "acme", "seq": s, "hash": f"h{s}"} for s in range(21, 41)]
    events = FakeEvents(docs)
    events.markers = FakeMarkers({"acme": {"_id": "acme", "through_seq": 20}})
    head = await chain_head(events, "acme", {"seq": 1, "hash": 1}, SECANTUSDB)
    assert (head or {}).get("hash") == "h40"
    ranges = [f["seq"]["$gte"] for f, _ in events.queries if isinstance(f["seq"], dict)]
    assert ranges == [41], events.queries  # only the one confirming nothing lies beyond
    # a marker beyond what is stored (a rebuilt copy still filling): the old path
    short = FakeEvents([{"tenant": "acme", "seq": s} for s in range(1, 6)])
    short.markers = FakeMarkers({"acme": {"_id": "acme", "through_seq": 20}})
    assert (await chain_head(short, "acme", {"seq": 1}, SECANTUSDB) or {})["seq"] == 5
    # no marker for the tenant: from seq 1 as before
    plain = FakeEvents([{"tenant": "acme", "seq": s} for s in range(1, 6)])
    plain.markers = FakeMarkers({})
    assert (await chain_head(plain, "acme", {"seq": 1}, SECANTUSDB) or {})["seq"] == 5
