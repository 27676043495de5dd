"""The windowed list read (query_api/listing.py) on the real store: the same pages as
the plain ``mongo_filter`` query for every filter, order and cursor, and a query
shape the store answers from an index range."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, IndexModel, monitoring

from audit_events.codec import event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION
from audit_events.store_adapter import SECANTUSDB, ensure_chain_index
from query_api.listing import index_equality, read_page, windows
from query_api.query import encode_cursor, mongo_filter, parse_list_query, sort_spec
from query_api.store import MongoEventStore
from tests.helpers import T0, Store, make_event

pytestmark = pytest.mark.integration


def _when(n: int) -> datetime:
    if n % 50 == 0:  # far in the past: the widening windows, then the open range
        return T0 - timedelta(days=400 + n)
    if n % 47 == 0:  # in the future (clock skew): the open first window
        return datetime.now(UTC) + timedelta(hours=n)
    return T0 + timedelta(seconds=n // 3)  # ties on every page


def _varied(n: int) -> dict[str, Any]:
    """Values for the filters without an index of their own (source, crud, outcome,
    actor type), some rare, and a second target type for one id."""
    fields: dict[str, Any] = {
        "source": {"service": ("billing", "identity", "docs")[n % 3]},
        "crud": "cru"[n % 3],
        "outcome": "failure" if n % 11 == 0 else "success",
    }
    if n % 13 == 0:
        fields["actor"] = {"id": "svc-ci", "type": "service"}
    if n % 17 == 0:
        fields["targets"] = [{"type": "project", "id": str(n % 10)}]
    return fields


async def seed(db: Store) -> None:
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    events = [make_event(n, occurred_at=_when(n), **_varied(n)) for n in range(240)]
    events += [make_event(n, tenant="other", occurred_at=_when(n)) for n in range(30)]
    await db.put(events)
    erased = [f"acme/acme-{n:06d}" for n in random.Random(3).sample(range(240), 25)]
    await db.events.update_many(
        {"_id": {"$in": erased}}, {"$set": {"erased": {"by": "x", "why": "gdpr"}}}
    )


async def walk(db: Store, params: dict[str, str], windowed: bool) -> list[list[str]]:
    include_erased = params.pop("include_erased", "false") == "true"
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        args = support_args({**params, **({"cursor": cursor} if cursor else {})})
        query = parse_list_query(args)
        if windowed:
            docs = await read_page(db.events, "acme", query, include_erased)
        else:
            where = mongo_filter("acme", query)
            if include_erased:
                where.pop("erased")
            find = db.events.find(where).sort(sort_spec(query.order))
            docs = await find.limit(query.limit + 1).to_list()
        page = docs[: query.limit]
        pages.append([d["_id"] for d in page])
        if len(docs) <= query.limit:
            return pages
        cursor = encode_cursor(page[-1]["occurred_at"], page[-1]["_id"])


def support_args(params: dict[str, str]) -> Any:
    from werkzeug.datastructures import MultiDict

    return MultiDict(params)


CASES = [
    {},
    {"actor": "alice"},
    {"action": "invoice.update"},
    {"action": "invoice.*"},
    {"target_type": "invoice", "target_id": "3"},
    {"target_id": "3"},
    {"q": "number"},
    {"outcome": "success", "actor_type": "user"},
    {"outcome": "failure"},
    {"actor_type": "service"},
    {"crud": "u"},
    {"source": "identity"},
    {"source": "docs", "actor": "bob"},
    {"target_type": "project", "target_id": "4"},
    {"action": "invoice.*", "crud": "c"},
    {"since": "2026-01-01T00:00:10Z", "until": "2026-01-01T00:01:00Z"},
    {"since": "2024-01-01T00:00:00Z"},
    {"until": "2026-01-01T00:00:30.5Z"},
    {"include_erased": "true"},
    {"action": "invoice.update", "include_erased": "true"},
    {"q": "number", "actor": "alice"},
]


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_windowed_pages_equal_the_plain_query(db: Store, order: str) -> None:
    await seed(db)
    for case in CASES:
        params = {**case, "order": order, "limit": "7"}
        expected = await walk(db, dict(params), windowed=False)
        got = await walk(db, dict(params), windowed=True)
        assert got == expected, params
        assert sum(map(len, got)) > 0 or "target_id" in case, params


# Every list filter, and the ``search`` value whose index range its store query reads
# (audit_events/storage.py: one index, tenant_search_time, serves them all).
FILTER_TOKENS: list[tuple[dict[str, str], str]] = [
    ({}, "*"),
    ({"actor": "alice"}, "a:alice"),
    ({"action": "user.login"}, "c:user.login"),
    ({"action": "invoice.*"}, "*"),
    ({"target_type": "invoice", "target_id": "3"}, "t:3"),
    ({"target_id": "3"}, "t:3"),
    ({"target_type": "invoice"}, "*"),
    ({"q": "number"}, "number"),
    ({"actor_type": "service"}, "*"),
    ({"outcome": "failure"}, "*"),
    ({"crud": "u"}, "*"),
    ({"source": "identity"}, "*"),
    ({"since": "2026-01-01T00:00:10Z", "until": "2026-01-01T00:01:00Z"}, "*"),
    # Combinations: the most selective token, the rest checked after the range.
    ({"q": "Invoice number", "actor": "bob"}, "a:bob"),
    ({"action": "invoice.update", "q": "number"}, "c:invoice.update"),
    ({"target_id": "3", "actor": "alice", "action": "invoice.update"}, "t:3"),
    ({"action": "invoice.*", "crud": "c", "outcome": "success"}, "*"),
]


async def test_the_store_reads_an_index_range(db: Store) -> None:
    """Every filter's store query plans an index scan of tenant_search_time on its
    token, with the indexes the processor creates (EVENT_INDEXES) and no others."""
    await seed(db)
    names = {d["name"] async for d in await db.events.list_indexes()}
    assert names == {"_id_", *(n for n, _ in EVENT_INDEXES)}
    for order in ("desc", "asc"):
        for params, token in FILTER_TOKENS:
            query = parse_list_query(support_args({**params, "order": order}))
            first = next(windows(query, datetime.now(UTC)))
            where = {"tenant": "acme", **index_equality(query)}
            assert where["search"] == token, params
            if first:
                where["occurred_at"] = first
            plan = await db.events.find(where).sort(sort_spec(order)).explain()
            winning = str(plan["queryPlanner"]["winningPlan"])
            assert "COLLSCAN" not in winning and "'indexName': 'tenant_search_time'" in winning, (
                params,
                order,
                plan,
            )
    # The old shape: the erased clause made the store scan the collection.
    old = mongo_filter("acme", parse_list_query(support_args({})))
    plan = await db.events.find(old).sort(sort_spec("desc")).explain()
    assert "COLLSCAN" in str(plan["queryPlanner"]["winningPlan"])


async def test_gte_on_a_descending_index_field(db: Store) -> None:
    """Why listing.py never sends ``$gte``: the store drops the equal entries."""
    await seed(db)
    at = T0 + timedelta(seconds=10)
    every = await db.events.find({"tenant": "acme"}, {"occurred_at": 1}).to_list()
    expected = {d["_id"] for d in every if d["occurred_at"] >= at}
    gt = {"$gt": at - timedelta(milliseconds=1)}
    docs_gt = await db.events.find({"tenant": "acme", "occurred_at": gt}).to_list()
    assert {d["_id"] for d in docs_gt} == expected
    docs = await db.events.find({"tenant": "acme", "occurred_at": {"$gte": at}}).to_list()
    assert {d["_id"] for d in docs} <= expected  # SecantusDB: without the 3 equal to `at`


class _Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append(
                {"filter": event.command["filter"], "sort": event.command.get("sort", {})}
            )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


async def test_history_exports_and_the_as_of_fold_read_an_index_range(
    db: Store, settings: AuditSettings
) -> None:
    """The data layer's history page, export and as-of fold (query_api/store.py) ask
    only what an index answers (no ``erased`` clause), and answer what the plain
    ``mongo_filter`` query answers."""
    await seed(db)
    finds = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[finds]
    )
    try:
        store = MongoEventStore(client[settings.mongo_db][EVENTS_COLLECTION])
        target = {"target_type": "invoice", "target_id": "3"}
        history = parse_list_query(support_args({**target, "order": "asc", "limit": "1000"}))
        page = [d["_id"] for d in await store.history_page("acme", history)]
        exported = [
            d["_id"]
            async for d in store.export(
                "acme", parse_list_query(support_args({"actor": "bob"})), False
            )
        ]
        since = parse_list_query(support_args({"since": "2026-01-01T00:00:10Z", "order": "asc"}))
        exported_since = [d["_id"] async for d in store.export("acme", since, True)]
        state = await store.state_as_of("acme", "invoice", "3", T0 + timedelta(days=1))
        # GET /v1/histogram's scan, with and without the erased events.
        by_actor = parse_list_query(support_args({"actor": "bob"}))
        times = await store.times("acme", by_actor, False, 10_000)
        times_erased = await store.times("acme", since, True, 10_000)
        capped = await store.times("acme", since, True, 3)
    finally:
        await client.close()

    async def plain(params: dict[str, str], include_erased: bool = False) -> list[str]:
        where = mongo_filter("acme", parse_list_query(support_args(params)))
        if include_erased:
            where.pop("erased")
        order = params.get("order", "desc")
        return [d["_id"] async for d in db.events.find(where).sort(sort_spec(order))]

    assert page == await plain({**target, "order": "asc"}) and page
    assert exported == await plain({"actor": "bob"}) and exported
    assert exported_since == await plain({"since": "2026-01-01T00:00:10Z", "order": "asc"}, True)
    assert len(exported_since) > 3  # the events at the since bound too ($gt, not $gte)
    # The fold applies the successful events only (query_api/asof.py).
    applied = await plain({**target, "outcome": "success", "order": "asc"})
    assert state["events_applied"] == len(applied) and len(applied) < len(page)

    async def plain_times(params: dict[str, str], include_erased: bool = False) -> list[datetime]:
        where = mongo_filter("acme", parse_list_query(support_args(params)))
        if include_erased:
            where.pop("erased")
        return sorted([d["occurred_at"] async for d in db.events.find(where)])

    assert sorted(times) == await plain_times({"actor": "bob"}) and times
    assert sorted(times_erased) == await plain_times({"since": "2026-01-01T00:00:10Z"}, True)
    assert len(capped) == 3
    assert finds.finds and all("erased" not in str(f["filter"]) for f in finds.finds)
    for find in finds.finds:
        plan = await db.events.find(find["filter"]).sort(list(find["sort"].items())).explain()
        winning = str(plan["queryPlanner"]["winningPlan"])
        assert "COLLSCAN" not in winning and "IXSCAN" in winning, (find, plan)


async def test_a_dense_tenants_first_window_holds_about_a_page(
    db: Store, settings: AuditSettings
) -> None:
    """A tenant that stored ~100 events a second: after one read, the next uncached
    first page reads windows sized by the density seen, not a minute of events (which
    the store materialises whole before the limit), also when its newest event is
    some time ago."""
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    newest = datetime.now(UTC) - timedelta(seconds=30)  # not written to lately
    await db.put(
        [
            make_event(n, tenant="dense", occurred_at=newest - timedelta(milliseconds=10 * n))
            for n in range(3000)
        ]
    )
    finds = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[finds]
    )
    try:
        coll = client[settings.mongo_db][EVENTS_COLLECTION]
        find = coll.find(mongo_filter("dense", _q({"limit": "50"}))).sort(sort_spec("desc"))
        plain = [d["_id"] for d in await find.limit(51).to_list()]
        first = [d["_id"] for d in await read_page(coll, "dense", _q({"limit": "50"}), False)]
        finds.finds.clear()
        again = [d["_id"] for d in await read_page(coll, "dense", _q({"limit": "50"}), False)]
    finally:
        await client.close()
    assert first == again == plain and len(again) == 51
    # Each window the second read asked for holds about two pages (was: 60 s, 3,000).
    for find in finds.finds:
        assert await db.events.count_documents(find["filter"]) <= 300, finds.finds


def _q(params: dict[str, str]) -> Any:
    return parse_list_query(support_args(params))


async def test_a_sparse_keys_first_window_holds_its_page(
    db: Store, settings: AuditSettings
) -> None:
    """An actor with one event every 100 s: after one read, the next uncached first
    page of that actor reads one window sized by the density seen (about two pages),
    not a minute and then wider ones (two or more round trips each time)."""
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    newest = datetime.now(UTC) - timedelta(seconds=30)
    events = [
        make_event(n, tenant="sparse", occurred_at=newest - timedelta(seconds=2 * n))
        for n in range(3000)
    ]
    for n in range(0, 3000, 50):  # one event in 50: the rare actor's
        events[n] = make_event(
            n, tenant="sparse", occurred_at=events[n].occurred_at, actor={"id": "rare"}
        )
    await db.put(events)
    finds = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[finds]
    )
    query = _q({"limit": "20", "actor": "rare"})
    try:
        coll = client[settings.mongo_db][EVENTS_COLLECTION]
        find = coll.find(mongo_filter("sparse", query)).sort(sort_spec("desc"))
        plain = [d["_id"] for d in await find.limit(21).to_list()]
        first = [d["_id"] for d in await read_page(coll, "sparse", query, False)]
        finds.finds.clear()
        again = [d["_id"] for d in await read_page(coll, "sparse", query, False)]
    finally:
        await client.close()
    assert first == again == plain and len(again) == 21
    assert len(finds.finds) == 1, finds.finds  # one window (was: 60 s, then wider)
    assert await db.events.count_documents(finds.finds[0]["filter"]) <= 120


async def seed_chain(db: Store, tenant: str, times: list[datetime]) -> None:
    """Events of ``tenant`` at ``times`` (ascending) stored as the processor stores
    them: seq 1.. in that order, the events and chain indexes."""
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    await ensure_chain_index(db.events, SECANTUSDB)
    await db.events.insert_many(
        [
            {
                **event_to_document(make_event(n, tenant=tenant, occurred_at=t), times[-1]),
                "seq": n + 1,
            }
            for n, t in enumerate(times)
        ]
    )


async def assert_reads_about_a_page(
    db: Store, settings: AuditSettings, tenant: str, params: dict[str, str], reads: int
) -> None:
    """``reads`` uncached first pages (limit 50) of ``params`` in a row: each the plain
    query's page, each window of each read holding at most 600 index entries."""
    query = _q({"limit": "50", **params})
    finds = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, event_listeners=[finds]
    )
    try:
        coll = client[settings.mongo_db][EVENTS_COLLECTION]
        find = coll.find(mongo_filter(tenant, query)).sort(sort_spec(query.order))
        plain = [d["_id"] for d in await find.limit(51).to_list()]
        done = []
        for _ in range(reads):
            finds.finds.clear()
            page = [d["_id"] for d in await read_page(coll, tenant, query, False)]
            done.append((page, list(finds.finds)))
    finally:
        await client.close()
    for page, windows_read in done:
        assert page == plain and len(page) == 51
        for window in windows_read:
            if "search" in window["filter"]:  # a window (not a probe of the chain)
                held = await db.events.count_documents(window["filter"])
                assert held <= 600, (held, windows_read)


@pytest.mark.parametrize(
    "params",
    [
        {"until": "2031-01-01T00:00:00Z"},  # newest first, from years after the events
        {"since": "2019-01-01T00:00:00Z", "order": "asc"},  # oldest first, from years before
    ],
    ids=["desc-until-after", "asc-since-before"],
)
async def test_a_page_bounded_far_from_the_events_reads_about_a_page(
    db: Store, settings: AuditSettings, params: dict[str, str]
) -> None:
    """A page whose own time bound lies years away from the tenant's events (the
    viewer's "until" after the newest, "since" before the oldest): the first read and
    every one after it read windows of about a page, not the whole tenant (was: the
    window that crossed the gap held every event, and its density, measured over the
    gap, made every later first window a day wide)."""
    tenant = "far-" + params.get("order", "desc")
    newest = datetime.now(UTC) - timedelta(seconds=30)
    await seed_chain(db, tenant, [newest - timedelta(seconds=n) for n in range(3000)][::-1])
    await assert_reads_about_a_page(db, settings, tenant, params, reads=3)


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_a_page_that_starts_in_a_quiet_period_reads_about_a_page(
    db: Store, settings: AuditSettings, order: str
) -> None:
    """A tenant busy for an hour two days ago and in the last hour, quiet between (a
    night, a weekend): a page that starts in the quiet gap (``until`` in it, newest
    first; ``since`` in it, oldest first) reads windows of about a page, the first
    time and after (was: windows growing 4x across the gap until one spanned the
    whole other busy hour, every event of it materialised)."""
    tenant = "quiet-" + order
    recent = datetime.now(UTC) - timedelta(seconds=30)
    earlier = recent - timedelta(days=2)
    times = [earlier - timedelta(seconds=n) for n in range(3000)][::-1]  # one a second
    times += [recent - timedelta(seconds=n) for n in range(3000)][::-1]
    await seed_chain(db, tenant, times)
    gap = (earlier + timedelta(hours=12)).isoformat()
    params = {"until": gap} if order == "desc" else {"since": gap}
    await assert_reads_about_a_page(db, settings, tenant, {"order": order, **params}, reads=2)
