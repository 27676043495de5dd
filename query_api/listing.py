"""One page of ``GET /v1/events`` read through a bounded index range.

The store is asked only what an index answers: the tenant, at most one indexed
equality (actor, exact action, target, or one search word) and an
``occurred_at`` range, sorted by ``(occurred_at, _id)``. Every other clause —
erased, the other filters, the keyset cursor's tie-break — is checked here,
after the index range, by :func:`matcher` (the same semantics as
:func:`query_api.query.mongo_filter`).

MongoDB walks ``(tenant[, field], occurred_at, _id)`` in order and stops when
the page is full. SecantusDB (the development store) materialises every index
match of a query before it sorts and applies ``limit``, so the range is
*bounded*: a window next to the page's start (``FIRST_WINDOW``, or sized by the
density the last read measured: :func:`first_window`), then disjoint windows
``GROWTH`` times wider (or as wide as the last window's density says the rest of
the page needs; after an empty one, reaching the nearest time where the tenant
has events), until the page is full, the query's own time bound is reached, or a
window would be wider than ``MAX_WIDTH`` (then one last open-ended range). The
keyset cursor is unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from audit_events.retention import PURGES_COLLECTION
from audit_events.storage import CHAIN_INDEX
from audit_events.store_adapter import StoreCapabilities, capabilities_of, chain_head
from query_api.query import ListQuery, index_token, search_words, sort_spec

FIRST_WINDOW = timedelta(seconds=60)
GROWTH = 4
MAX_WIDTH = timedelta(days=100 * 365)  # wider windows: one open-ended range instead


def _at_or_after(when: datetime) -> dict[str, Any]:
    """``occurred_at >= when`` as ``$gt`` one millisecond earlier.

    Stored times have millisecond precision, so both are the same set on
    MongoDB (the matcher checks the exact bound again); SecantusDB answers
    ``$gte`` on a descending compound-index field without the entries equal
    to the bound (``test_listing_store`` shows it), ``$gt`` correctly.
    """
    floor = when.replace(microsecond=when.microsecond // 1000 * 1000)
    try:
        return {"$gt": floor - timedelta(milliseconds=1)}
    except OverflowError:  # the calendar's first millisecond: no lower bound at all
        return {}


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _field(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def index_equality(query: ListQuery) -> dict[str, Any]:
    """The one indexed equality the store filters on (besides the tenant): one value
    of the ``search`` array, :func:`query_api.query.index_token` (the only index of
    ``EVENT_INDEXES``, audit_events/storage.py: SecantusDB scans the collection when
    a query names a field its index lacks). Every filter is checked again by
    :func:`matcher`."""
    return {"search": index_token(query)}


#: The fields :func:`matcher` reads: a projection that keeps them serves any filter.
MATCHED_FIELDS: dict[str, int] = dict.fromkeys(
    (
        "_id",
        "occurred_at",
        "erased",
        "action",
        "actor.id",
        "actor.type",
        "outcome",
        "crud",
        "source.service",
        "targets",
        "search",
    ),
    1,
)


def matcher(query: ListQuery, include_erased: bool) -> Callable[[dict[str, Any]], bool]:
    """A predicate with :func:`mongo_filter`'s semantics for every clause but the tenant."""
    f = query.filters
    simple = [
        (path, f[name])
        for name, path in (
            ("actor", "actor.id"),
            ("actor_type", "actor.type"),
            ("outcome", "outcome"),
            ("crud", "crud"),
            ("source", "source.service"),
        )
        if name in f
    ]
    action = f.get("action")
    prefix = re.compile("^" + re.escape(action[:-1])) if action and action.endswith(".*") else None
    target = {k: f["target_" + k] for k in ("type", "id") if "target_" + k in f}
    words = search_words(f["q"]) if "q" in f else []
    since = datetime.fromisoformat(f["since"]) if "since" in f else None
    until = datetime.fromisoformat(f["until"]) if "until" in f else None
    cursor = query.cursor
    desc = query.order == "desc"

    def match(doc: dict[str, Any]) -> bool:
        if not include_erased and "erased" in doc:
            return False
        for path, value in simple:
            if _field(doc, path) != value:
                return False
        if action is not None:
            stored = doc.get("action")
            if not isinstance(stored, str):
                return False
            if prefix is not None:
                if not prefix.match(stored):
                    return False
            elif stored != action:
                return False
        if target:
            targets = doc.get("targets")
            if not isinstance(targets, list) or not any(
                isinstance(t, dict) and all(t.get(k) == v for k, v in target.items())
                for t in targets
            ):
                return False
        if words:
            search = doc.get("search")
            if not isinstance(search, list) or not all(w in search for w in words):
                return False
        when = doc.get("occurred_at")
        if not isinstance(when, datetime):
            return False
        when = _utc(when)
        if since is not None and when < since:
            return False
        if until is not None and when >= until:
            return False
        if cursor is not None:
            at, last_id = cursor
            key, bound = (when, doc["_id"]), (at, last_id)
            if (key >= bound) if desc else (key <= bound):
                return False
        return True

    return match


def windows(
    query: ListQuery,
    now: datetime,
    hints: Sequence[datetime] = (),
    oldest: datetime | None = None,
    first: timedelta = FIRST_WINDOW,
) -> Generator[dict[str, Any], float, None]:
    """The ``occurred_at`` ranges to read, in page order, as MongoDB range operators.

    A generator without I/O: ``send(factor)`` makes the next window ``factor``
    times wider than the last (``next()``: ``GROWTH``). Past ``MAX_WIDTH`` (or
    the calendar's edge) the last range is open-ended. ``send(0)`` says the
    last window held nothing for the page: the next one then also reaches the
    nearest of ``hints`` beyond it (times where the tenant has events, ascending:
    the newest one seen, the chain's head, times sampled along the chain; read
    when that window is made, so the caller may fill the list after an empty
    window), so a page that starts in a gap (a night, ``until`` years after the
    data) crosses it in one window instead of windows growing across it until one
    spans the events on the other side.
    Ascending with no start (no cursor, no ``since``), ``oldest`` (a hint: a time
    near the tenant's oldest events) anchors the windows: the first one is
    everything below it, the next ones start there; without it, one open range.
    (A ``since`` far below the events is a gap like any other: the jump crosses it.)
    ``first``: the first window's width (:func:`first_window`: narrower for a dense
    tenant), also the base after a jump that found events.
    """
    f = query.filters
    since = datetime.fromisoformat(f["since"]) if "since" in f else None
    until = datetime.fromisoformat(f["until"]) if "until" in f else None
    at = query.cursor[0] if query.cursor else None
    width = first
    jumped = False
    if query.order == "desc":
        # The first window's upper end: the cursor (inclusive; its tie-break is
        # checked by the matcher), else ``until`` (exclusive), else open.
        upper: dict[str, Any] = {}
        edge = now
        if at is not None and (until is None or at < until):
            upper, edge = {"$lte": at}, at
        elif until is not None:
            upper, edge = {"$lt": until}, until
        while width <= MAX_WIDTH:
            try:
                lower = edge - width
            except OverflowError:
                break
            if since is not None and lower <= since:
                break
            factor = yield {**upper, **_at_or_after(lower)}
            # After a jump that found events, they lie in its last ``first``: the base.
            base = first if jumped and factor else width
            upper, edge, width, jumped = {"$lt": lower}, lower, base * (factor or GROWTH), False
            i = bisect.bisect_left(hints, edge)  # the newest hint below the edge
            if factor == 0 and i:
                width, jumped = max(width, edge - hints[i - 1] + first), True
        yield {**upper, **(_at_or_after(since) if since else {})}
        return
    lower_op: dict[str, Any] = {}
    start: datetime | None = None
    if at is not None and (since is None or at >= since):
        lower_op, start = _at_or_after(at), at
    elif since is not None:
        lower_op, start = _at_or_after(since), since
    if start is None and oldest is not None and (until is None or oldest < until):
        # Everything below the hint, then windows from it: the two tile the range.
        factor = yield {"$lt": oldest}
        lower_op, start = _at_or_after(oldest), oldest
        width = first * (factor or GROWTH)
    if start is None:  # ascending from the tenant's first event: one open range
        yield {"$lt": until} if until else {}
        return
    while width <= MAX_WIDTH:
        try:
            higher = start + width
        except OverflowError:
            break
        if until is not None and higher >= until:
            break
        factor = yield {**lower_op, "$lt": higher}
        base = first if jumped and factor else width
        lower_op, start, width, jumped = (
            _at_or_after(higher),
            higher,
            base * (factor or GROWTH),
            False,
        )
        i = bisect.bisect_left(hints, start)  # the oldest hint at or above the start
        if factor == 0 and i < len(hints):
            width, jumped = max(width, hints[i] - start + first), True
    yield {**lower_op, **({"$lt": until} if until else {})}


# The newest occurred_at each tenant's reads have seen (this process): where a
# tenant's events are, a hint for the window after an empty one. Any value is
# correct (it only sizes a window); bounded.
_NEWEST: dict[str, datetime] = {}
_NEWEST_MAX = 10_000


# Index entries per second of ``occurred_at`` the last bounded window of a
# (tenant, index value) held (this process): sizes the next read's first window
# so it holds about two pages: a dense tenant's not a minute of events (a store that
# materialises before limit reads them all), a sparse key's (a rare actor) its page
# in one round trip. A hint only; bounded.
_DENSITY: dict[tuple[str, str], float] = {}
#: The narrowest first window (a dense tenant's) and the widest (a sparse key's: a
#: rare actor, a quiet tenant), once a read measured the key's density.
MIN_FIRST_WINDOW = timedelta(seconds=1)
MAX_FIRST_WINDOW = timedelta(days=1)


def first_window(key: tuple[str, str], want: int) -> timedelta:
    """The first window's width at the density last seen for ``key`` (tenant, index
    value): ``FIRST_WINDOW`` while that holds ``want`` to ``2 x want`` entries (and
    before any read measured it); else about ``2 x want`` entries (a dense key), or
    ``1.5 x want`` (a sparse one), from ``MIN_FIRST_WINDOW`` to ``MAX_FIRST_WINDOW``."""
    density = _DENSITY.get(key)
    if not density:
        return FIRST_WINDOW
    expected = density * FIRST_WINDOW.total_seconds()
    if expected > 2 * want:
        return max(MIN_FIRST_WINDOW, timedelta(seconds=2 * want / density))
    if expected < want:
        return min(MAX_FIRST_WINDOW, timedelta(seconds=1.5 * want / density))
    return FIRST_WINDOW


def _measured(key: tuple[str, str], n: int, low: datetime | None, high: datetime | None) -> None:
    """Remember the density of the ``n`` index entries a window returned, from the
    oldest (``low``) to the newest (``high``): over the entries' own span, not the
    window's, so a window that crossed a gap (the jump to the tenant's events, a
    ``since``/``until`` years away) does not record the gap as a sparse key."""
    if n < 2 or low is None or high is None:
        return
    seconds = (_utc(high) - _utc(low)).total_seconds()
    if seconds <= 0:
        return
    _bounded_set(_DENSITY, key, (n - 1) / seconds)


def _bounded_set(hints: dict[Any, Any], key: Any, value: Any) -> None:
    """``hints[key] = value``, the oldest key dropped at ``_NEWEST_MAX`` keys."""
    if key not in hints and len(hints) >= _NEWEST_MAX:
        del hints[next(iter(hints))]
    hints[key] = value


def _saw(tenant: str, when: Any) -> None:
    if not isinstance(when, datetime):
        return
    when = _utc(when)
    known = _NEWEST.get(tenant)
    if known is None or when > known:
        _bounded_set(_NEWEST, tenant, when)


def keyset_range(query: ListQuery) -> dict[str, Any]:
    """The page's whole ``occurred_at`` range as one MongoDB range (the plain keyset
    query): from the cursor (inclusive; its tie-break is the matcher's) or the
    query's own start, to its own end."""
    f = query.filters
    since = datetime.fromisoformat(f["since"]) if "since" in f else None
    until = datetime.fromisoformat(f["until"]) if "until" in f else None
    at = query.cursor[0] if query.cursor else None
    out: dict[str, Any] = {}
    if query.order == "desc":
        if at is not None and (until is None or at < until):
            out["$lte"] = at
        elif until is not None:
            out["$lt"] = until
        if since is not None:
            out.update(_at_or_after(since))
        return out
    if at is not None and (since is None or at >= since):
        out.update(_at_or_after(at))
    elif since is not None:
        out.update(_at_or_after(since))
    if until is not None:
        out["$lt"] = until
    return out


async def read_page(
    collection: Any,
    tenant: str,
    query: ListQuery,
    include_erased: bool,
    caps: StoreCapabilities | None = None,
    projection: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``query.limit + 1`` matching documents in page order.

    On a store that materialises before ``limit`` (``caps``, detected when not
    given) in bounded :func:`windows`; otherwise the plain keyset query, one
    range (:func:`keyset_range`) walked in order until the page is full.
    ``projection`` must keep the fields :func:`matcher` reads (``MATCHED_FIELDS``)."""
    fields = dict(projection) if projection is not None else None
    caps = caps or await capabilities_of(collection)
    base: dict[str, Any] = {"tenant": tenant, **index_equality(query)}
    match = matcher(query, include_erased)
    want = query.limit + 1
    docs: list[dict[str, Any]] = []
    if not caps.materialises_before_limit:
        time_range = keyset_range(query)
        where = {**base, "occurred_at": time_range} if time_range else base
        cursor = collection.find(where, fields).sort(sort_spec(query.order))
        cursor = cursor.batch_size(max(want, 101))
        try:
            async for doc in cursor:
                if match(doc):
                    docs.append(doc)
                    if len(docs) >= want:
                        break
        finally:
            await cursor.close()
        return docs
    seen: set[Any] = set()
    oldest = None
    if query.order == "asc" and query.cursor is None and "since" not in query.filters:
        oldest = await _oldest_hint(collection, tenant, caps)
    # Where the tenant has events: the newest this process has seen, and after the
    # first empty window the chain's head and samples (:func:`windows` jumps there).
    hints = [_NEWEST[tenant]] if tenant in _NEWEST else []
    located = False
    key = (tenant, str(base["search"]))
    first = first_window(key, want)
    ranges = windows(query, datetime.now(UTC), hints, oldest, first)
    time_range = next(ranges)
    while True:
        where = {**base, "occurred_at": time_range} if time_range else base
        cursor = collection.find(where, fields).sort(sort_spec(query.order))
        found = returned = 0
        low: datetime | None = None  # the oldest and newest entries returned
        high: datetime | None = None
        try:
            async for doc in cursor:
                returned += 1
                when = doc.get("occurred_at")
                if isinstance(when, datetime):
                    low = when if low is None or when < low else low
                    high = when if high is None or when > high else high
                if doc["_id"] in seen or not match(doc):
                    continue
                seen.add(doc["_id"])
                docs.append(doc)
                _saw(tenant, doc["occurred_at"])
                found += 1
                if len(docs) >= want:
                    _measured(key, returned, low, high)
                    return docs
        finally:
            await cursor.close()
        _measured(key, returned, low, high)
        if not found and not located:
            known = hints[:]  # the newest seen, if any
            hints[:] = await _chain_times(collection, tenant, caps)  # a sorted copy
            for when in known:
                bisect.insort(hints, when)
            located = True
        # Wide enough for the rest of the page at this window's density (x1.25).
        factor = 0.0 if not found else min(64.0, max(2.0, 1.25 * (want - len(docs)) / found))
        try:
            time_range = ranges.send(factor)
        except StopIteration:
            return docs


# --- reads without a page limit (exports) ------------------------------------

#: An export window's expected size on a store that materialises before limit.
WINDOW_EVENTS = 2000
#: Sampled times per window boundary (the boundaries are every k-th sampled time).
OVERSAMPLE = 4
#: At most this many sampled events (one ``$in`` query on the chain index).
MAX_SAMPLES = 20_000


def sample_seqs(first: int, last: int) -> list[int]:
    """Evenly spaced seqs of ``first..last`` (a tenant's chain): ``OVERSAMPLE`` per
    ``WINDOW_EVENTS`` events, none when the chain fits one window."""
    per_window = WINDOW_EVENTS
    n = last - first + 1
    if n <= per_window:
        return []
    count = min(MAX_SAMPLES, -(-n * OVERSAMPLE // per_window))
    return sorted({first + (2 * j + 1) * n // (2 * count) for j in range(count)})


def boundaries(times: list[datetime]) -> list[datetime]:
    """Window boundaries from sampled ``occurred_at`` times: every ``OVERSAMPLE``-th
    of them in time order, distinct, ascending."""
    ordered = sorted(_utc(t) for t in times)
    return sorted(set(ordered[OVERSAMPLE // 2 :: OVERSAMPLE]))


def time_windows(
    query: ListQuery, cuts: list[datetime]
) -> list[tuple[datetime | None, datetime | None]]:
    """``[lo, hi)`` windows in ``query.order`` that tile the query's own
    ``since``/``until`` range (``None``: open) at ``cuts`` (ascending): every time
    lies in exactly one window."""
    f = query.filters
    since = datetime.fromisoformat(f["since"]) if "since" in f else None
    until = datetime.fromisoformat(f["until"]) if "until" in f else None
    inner = [c for c in cuts if (since is None or c > since) and (until is None or c < until)]
    edges: list[datetime | None] = [since, *inner, until]
    out = list(itertools.pairwise(edges))
    return out[::-1] if query.order == "desc" else out


async def _sampled_cuts(collection: Any, tenant: str, caps: StoreCapabilities) -> list[datetime]:
    """Window boundaries for ``tenant``'s events (:func:`boundaries` of
    :func:`_sampled_times`)."""
    return boundaries(await _sampled_times(collection, tenant, caps))


async def _sampled_times(collection: Any, tenant: str, caps: StoreCapabilities) -> list[datetime]:
    """``occurred_at`` of events sampled evenly along ``tenant``'s chain
    (:func:`sample_seqs`): ``O(log n)`` point lookups for the head (:func:`_head`),
    one ``$in`` query on the chain index for the samples. Empty when the collection
    has no chain index (each probe would scan) or the chain fits one window."""
    return await _samples_below(collection, tenant, await _head(collection, tenant, caps))


async def _samples_below(
    collection: Any, tenant: str, head: dict[str, Any] | None
) -> list[datetime]:
    """:func:`_sampled_times` from ``tenant``'s chain ``head``."""
    if head is None or not isinstance(head.get("seq"), int):
        return []
    marker = await collection.database[PURGES_COLLECTION].find_one(
        {"_id": tenant}, {"through_seq": 1}
    )
    through = marker.get("through_seq") if marker else None
    first = through + 1 if isinstance(through, int) and through > 0 else 1
    seqs = sample_seqs(first, int(head["seq"]))
    if not seqs:
        return []
    where = {"tenant": tenant, "seq": {"$in": seqs}}
    found = collection.find(where, {"occurred_at": 1, "_id": 0}).batch_size(len(seqs))
    return [d["occurred_at"] async for d in found if isinstance(d.get("occurred_at"), datetime)]


async def _head(collection: Any, tenant: str, caps: StoreCapabilities) -> dict[str, Any] | None:
    """``tenant``'s chain head (its ``seq`` and ``occurred_at``), None when the
    collection has no chain index (a probe would scan) or the tenant no event."""
    names = {ix.get("name") async for ix in await collection.list_indexes()}
    if CHAIN_INDEX[0] not in names:
        return None
    return await chain_head(collection, tenant, {"seq": 1, "occurred_at": 1}, caps)


# Per (database, tenant): (expiry, the times sampled along its chain, ascending,
# the chain head's time or None), this process. Hints only (they place windows),
# so they may be stale.
_CHAIN_TIMES: dict[tuple[str, str], tuple[float, list[datetime], datetime | None]] = {}
CHAIN_TIMES_TTL = 300.0


async def _chain_samples(
    collection: Any, tenant: str, caps: StoreCapabilities
) -> tuple[list[datetime], datetime | None]:
    """``tenant``'s sampled times (:func:`_sampled_times`, ascending) and its chain
    head's ``occurred_at``, cached for ``CHAIN_TIMES_TTL``."""
    database = getattr(getattr(collection, "database", None), "name", None)
    if not isinstance(database, str):
        return [], None
    key = (database, tenant)
    now = time.monotonic()
    cached = _CHAIN_TIMES.get(key)
    if cached is not None and cached[0] > now:
        return cached[1], cached[2]
    head = await _head(collection, tenant, caps)
    samples = sorted(_utc(t) for t in await _samples_below(collection, tenant, head))
    at = head.get("occurred_at") if head else None
    head_time = _utc(at) if isinstance(at, datetime) else None
    if len(_CHAIN_TIMES) >= _NEWEST_MAX:
        _CHAIN_TIMES.clear()
    _CHAIN_TIMES[key] = (now + CHAIN_TIMES_TTL, samples, head_time)
    return samples, head_time


async def _chain_times(collection: Any, tenant: str, caps: StoreCapabilities) -> list[datetime]:
    """Times where ``tenant`` has events, ascending (a new list): its sampled times
    and its chain head's."""
    samples, head = await _chain_samples(collection, tenant, caps)
    times = list(samples)
    if head is not None:
        bisect.insort(times, head)
    return times


async def _oldest_hint(collection: Any, tenant: str, caps: StoreCapabilities) -> datetime | None:
    """The oldest of the times sampled along ``tenant``'s chain (about
    ``WINDOW_EVENTS / OVERSAMPLE`` events lie below it), cached; None when there is
    nothing to sample (a small tenant: one open range is cheap)."""
    samples, _ = await _chain_samples(collection, tenant, caps)
    return samples[0] if samples else None


async def read_all(
    collection: Any,
    tenant: str,
    query: ListQuery,
    include_erased: bool,
    projection: Mapping[str, int] | None = None,
    batch_size: int = 1000,
    *,
    bounded: bool = False,
    caps: StoreCapabilities | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Every matching document in ``query.order``, for reads without a page limit
    (exports, the ``as_of`` fold): index ranges within the query's own ``since`` /
    ``until``, sorted by ``(occurred_at, _id)``; the other clauses are checked
    here by :func:`matcher` (so ``projection`` must keep the fields they test).
    The same shape as :func:`read_page`'s windows, without the slow ``erased``
    clause; ``query.limit`` and the cursor's window logic do not apply.

    ``bounded`` (exports), on a store that materialises before ``limit``: in
    :func:`time_windows` cut at times sampled along the tenant's chain, about
    ``WINDOW_EVENTS`` events each, so no round trip fetches the whole range.
    Otherwise (MongoDB, or no chain to sample) one range read in order."""
    cuts: list[datetime] = []
    if bounded:
        caps = caps or await capabilities_of(collection)
        if caps.materialises_before_limit:
            cuts = await _sampled_cuts(collection, tenant, caps)
    base: dict[str, Any] = {"tenant": tenant, **index_equality(query)}
    match = matcher(query, include_erased)
    fields = dict(projection) if projection is not None else None
    for lo, hi in time_windows(query, cuts):
        time_range: dict[str, Any] = _at_or_after(lo) if lo is not None else {}
        if hi is not None:
            time_range["$lt"] = hi
        where = {**base, "occurred_at": time_range} if time_range else base
        cursor = collection.find(where, fields).sort(sort_spec(query.order)).batch_size(batch_size)
        try:
            async for doc in cursor:
                when = doc.get("occurred_at")
                if lo is not None and isinstance(when, datetime) and _utc(when) < lo:
                    continue  # below the window ($gt one millisecond early): the next one's
                if match(doc):
                    yield doc
        finally:
            await cursor.close()
