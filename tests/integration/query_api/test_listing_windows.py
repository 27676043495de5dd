"""The store-capability seam of query_api/listing.py on the real store: the windowed
reads SecantusDB gets (``materialises_before_limit``) and the plain keyset reads
MongoDB gets return the same pages and exports; an export on SecantusDB reads
bounded windows, never the whole range at once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, IndexModel, monitoring
from werkzeug.datastructures import MultiDict

from audit_events.codec import event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import CHAIN_INDEX, EVENT_INDEXES, EVENTS_COLLECTION
from audit_events.store_adapter import MONGODB, SECANTUSDB, ensure_chain_index
from query_api import listing
from query_api.listing import read_page
from query_api.query import encode_cursor, mongo_filter, parse_list_query, sort_spec
from query_api.store import MongoEventStore
from tests.helpers import T0, Store, make_event

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def _when(n: int) -> datetime:
    """Gaps, equal times, far past and future, and most events in one old cluster."""
    if n % 53 == 0:
        return datetime(1971, 1, 1, tzinfo=UTC) + timedelta(days=n)  # far past
    if n % 47 == 0:
        return datetime(2999, 1, 1, tzinfo=UTC) - timedelta(hours=n)  # far future
    if n % 41 == 0:
        return NOW - timedelta(seconds=n % 7)  # a few live ones, next to now
    return T0 - timedelta(days=300) + timedelta(seconds=n // 3)  # ties: 3 per second


def _varied(n: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"outcome": "failure" if n % 11 == 0 else "success"}
    if n % 13 == 0:
        fields["actor"] = {"id": "svc-ci", "type": "service"}
    return fields


async def seed(db: Store, n: int) -> None:
    """``n`` events of acme stored as the processor stores them (seq 1..n, the
    chain index), some erased, and a few of another tenant."""
    await db.events.create_indexes([IndexModel(k, name=name) for name, k in EVENT_INDEXES])
    await ensure_chain_index(db.events, SECANTUSDB)
    docs = [
        {**event_to_document(make_event(i, occurred_at=_when(i), **_varied(i)), NOW), "seq": i + 1}
        for i in range(n)
    ]
    docs += [
        {
            **event_to_document(make_event(i, tenant="other", occurred_at=_when(i)), NOW),
            "seq": i + 1,
        }
        for i in range(20)
    ]
    await db.events.insert_many(docs)
    erased = [f"acme/acme-{i:06d}" for i in random.Random(5).sample(range(n), n // 10)]
    await db.events.update_many({"_id": {"$in": erased}}, {"$set": {"erased": {"by": "x"}}})


CASES: list[dict[str, str]] = [
    {},
    {"actor": "alice"},
    {"action": "invoice.update"},
    {"action": "invoice.*", "outcome": "success"},
    {"target_id": "3"},
    {"q": "number"},
    {"actor_type": "service"},
    {"outcome": "failure"},
    {"since": "1990-01-01T00:00:00Z"},
    {"until": "2026-01-01T00:00:00Z"},
    {"since": "2025-03-07T00:00:20Z", "until": "2025-03-07T00:00:50.5Z"},
    {"include_erased": "true"},
]


async def pages(db: Store, params: dict[str, str], windowed: bool) -> list[tuple[list[str], Any]]:
    """Every page of the list (ids, next cursor), read with SecantusDB's windows or
    with MongoDB's plain keyset query, on the same store."""
    include_erased = params.pop("include_erased", "false") == "true"
    caps = SECANTUSDB if windowed else MONGODB
    out: list[tuple[list[str], Any]] = []
    cursor: str | None = None
    while True:
        query = parse_list_query(MultiDict({**params, **({"cursor": cursor} if cursor else {})}))
        docs = await read_page(db.events, "acme", query, include_erased, caps)
        page = docs[: query.limit]
        cursor = (
            encode_cursor(page[-1]["occurred_at"], page[-1]["_id"])
            if len(docs) > query.limit
            else None
        )
        out.append(([d["_id"] for d in page], cursor))
        if cursor is None:
            return out


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_windowed_and_plain_pages_are_identical(
    db: Store, order: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small windows, so an ascending list without a start is anchored at the
    # oldest time sampled along the chain (a hint) rather than one open range.
    monkeypatch.setattr(listing, "WINDOW_EVENTS", 50)
    await seed(db, 240)
    for case in CASES:
        params = {**case, "order": order, "limit": "16"}
        windowed = await pages(db, dict(params), windowed=True)
        plain = await pages(db, dict(params), windowed=False)
        assert windowed == plain, params
        assert sum(len(ids) for ids, _ in plain) > 0 or "actor" in case, params
    if order == "asc":
        hint = listing._CHAIN_TIMES[(db.events.database.name, "acme")][1]
        assert hint  # the windows were anchored at a sampled time


class _Reads(monitoring.CommandListener):
    """Documents each ``find`` on the events returned (its first batch and getMores)."""

    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []
        self.returned: list[int] = []
        self._by_cursor: dict[int, int] = {}
        self._pending: dict[int, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == EVENTS_COLLECTION:
            self.finds.append(dict(event.command["filter"]))
            self.returned.append(0)
            self._pending[event.request_id] = len(self.finds) - 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor") or {}
        if event.request_id in self._pending:
            i = self._pending.pop(event.request_id)
            self.returned[i] += len(cursor.get("firstBatch", []))
            if cursor.get("id"):
                self._by_cursor[cursor["id"]] = i
        elif event.command_name == "getMore" and cursor.get("id") in self._by_cursor:
            self.returned[self._by_cursor[cursor["id"]]] += len(cursor.get("nextBatch", []))

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


EXPORT_CASES: list[dict[str, str]] = [
    {},
    {"order": "asc"},
    {"actor": "bob", "order": "asc"},
    {"outcome": "failure"},
    {"since": "2025-03-07T00:01:00Z", "until": "2025-03-07T00:02:00Z"},
    {"until": "2000-01-01T00:00:00Z", "order": "asc"},
]


async def test_exports_read_bounded_windows_and_equal_the_plain_query(
    db: Store, settings: AuditSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most events sit in one cluster 300 days back (an idle tenant), a few far in
    the past and future: each export window on SecantusDB holds about
    ``WINDOW_EVENTS`` events (before: one find returned all 600), and the export
    is the plain query's answer, event for event, in order."""
    n = 600
    monkeypatch.setattr(listing, "WINDOW_EVENTS", 50)
    await seed(db, n)
    reads = _Reads()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[reads]
    )
    try:
        store = MongoEventStore(client[settings.mongo_db][EVENTS_COLLECTION])
        for case in EXPORT_CASES:
            for include_erased in (False, True):
                query = parse_list_query(MultiDict(case))
                reads.finds.clear()
                reads.returned.clear()
                got = [d["_id"] async for d in store.export("acme", query, include_erased)]
                where = mongo_filter("acme", query)
                if include_erased:
                    where.pop("erased")
                plain = db.events.find(where).sort(sort_spec(query.order))
                assert got == [d["_id"] async for d in plain], case
                events = [
                    i for i, f in enumerate(reads.finds) if "occurred_at" in f or "search" in f
                ]
                assert max(reads.returned[i] for i in events) <= 150, (case, reads.returned)
                if not case:  # the whole tenant: about n / WINDOW_EVENTS windows
                    assert len(events) >= 8, reads.finds
    finally:
        await client.close()
    # The samples are one index lookup per seq on the chain index, not a scan.
    sample = {"tenant": "acme", "seq": {"$in": listing.sample_seqs(1, n)}}
    plan = str((await db.events.find(sample).explain())["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in plan and CHAIN_INDEX[0] in plan, plan
