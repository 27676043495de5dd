"""The store adapter: what the MongoDB server behind the store can do, and the
chain's MongoDB-shaped queries that depend on it.

:mod:`audit_events.storage` says *what* is stored (collections, index specs);
this module says *how* the chain is read and indexed on a given server. Three
behaviours differ between production MongoDB and the development server
SecantusDB (``auditstream up``, the tests, the bench), each behind a named
:class:`StoreCapabilities` field:

``backward_index_scan``
    MongoDB walks the ``(tenant, seq)`` index backwards, so a tenant's chain
    head is one query: ``find({tenant, seq >= 1}).sort(seq, -1).limit(1)``.
    SecantusDB does not walk indexes backwards: that sort scans and sorts the
    tenant's events (seconds for a large tenant), so without the capability the
    head is found by galloping and bisecting on ascending probes
    (:func:`find_head`, O(log n) index lookups). Both return the same event.
``partial_indexes``
    MongoDB plans queries with partial indexes, so the chain's unique
    ``(tenant, seq)`` index covers only documents that have a ``seq``
    (``partialFilterExpression: {seq: {$exists: true}}``). SecantusDB ignores
    partial indexes when planning, so there the index is not partial: every
    document of the collection must have a ``seq`` (the chain writers give every
    document one; only documents seeded directly, e.g. by tests, lack it).
    An existing index of the other form is kept as it is (see
    :func:`ensure_chain_index`): changing it is an operator's decision.
``materialises_before_limit``
    MongoDB walks an index range in order and stops at ``limit`` (or when the
    reader closes the cursor). SecantusDB fetches, filters and sorts every
    match of the range first, so an open range costs all of a tenant's events:
    there the API reads lists and exports in bounded ``occurred_at`` windows
    (:mod:`query_api.listing`); on MongoDB it keeps the plain keyset query.

The capabilities are detected from ``buildInfo`` (SecantusDB reports
``secantusVersion``). A server that cannot be asked gets :data:`CONSERVATIVE`:
the dev-server paths, which return the same results on any server, only slower
(so does an object that is not a PyMongo collection, such as a unit test's fake).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from audit_events.retention import PURGES_COLLECTION
from audit_events.storage import CHAIN_INDEX

if TYPE_CHECKING:
    from pymongo import IndexModel

# PyMongo is imported where it is used: the probes below are re-exported by the
# pure :mod:`audit_events.chain`, which the offline verifier imports without it.

log = logging.getLogger("auditstream.store")


@dataclass(frozen=True)
class StoreCapabilities:
    """What the server behind the store can do (see the module docstring)."""

    name: str
    #: walks an index backwards: ``sort(seq, -1).limit(1)`` is one index lookup
    backward_index_scan: bool
    #: plans queries with partial indexes: the chain index may be partial
    partial_indexes: bool
    #: materialises every index match of a query before it sorts and applies
    #: ``limit``: list and export reads ask for bounded time windows
    materialises_before_limit: bool = True


#: Production MongoDB (and any server that is not SecantusDB).
MONGODB = StoreCapabilities(
    "mongodb", backward_index_scan=True, partial_indexes=True, materialises_before_limit=False
)
#: The development server: no backward index walks, partial indexes not planned,
#: every index match materialised before ``limit``.
SECANTUSDB = StoreCapabilities("secantusdb", backward_index_scan=False, partial_indexes=False)
#: A server whose kind is unknown: the paths that give the same results everywhere.
CONSERVATIVE = StoreCapabilities("unknown", backward_index_scan=False, partial_indexes=False)


def capabilities_from_build_info(build_info: dict[str, Any]) -> StoreCapabilities:
    """The capabilities of the server that answered ``buildInfo`` with ``build_info``."""
    return SECANTUSDB if "secantusVersion" in build_info else MONGODB


_detected: weakref.WeakKeyDictionary[Any, StoreCapabilities] = weakref.WeakKeyDictionary()


async def capabilities_of(collection: Any) -> StoreCapabilities:
    """The capabilities of the server behind ``collection`` (detected once per client)."""
    from pymongo.errors import PyMongoError

    client = getattr(getattr(collection, "database", None), "client", None)
    if client is None:  # not a PyMongo collection (a test's fake)
        return CONSERVATIVE
    found = _detected.get(client)
    if found is None:
        try:
            found = capabilities_from_build_info(await client.admin.command("buildInfo"))
        except PyMongoError as exc:
            log.warning("buildInfo failed (%r): using the dev-server store paths", exc)
            return CONSERVATIVE
        _detected[client] = found
        log.info("store server: %s", found.name)
    return found


# --- the chain index -----------------------------------------------------------

#: Codes MongoDB answers when an index of the same name exists with other options/keys.
_INDEX_CONFLICT = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict


def chain_index_model(caps: StoreCapabilities) -> IndexModel:
    """The chain's unique ``(tenant, seq)`` index for a server with ``caps``."""
    from pymongo import IndexModel

    name, keys = CHAIN_INDEX
    if caps.partial_indexes:
        return IndexModel(
            keys, name=name, unique=True, partialFilterExpression={"seq": {"$exists": True}}
        )
    return IndexModel(keys, name=name, unique=True)


async def ensure_chain_index(collection: Any, caps: StoreCapabilities | None = None) -> None:
    """Create the chain index on ``collection`` (idempotent).

    An index of that name created earlier in the other form (partial or not) is
    kept: both forms keep chains from forking, and dropping a unique index
    under running writers is not something to do implicitly.
    """
    from pymongo.errors import OperationFailure

    caps = caps or await capabilities_of(collection)
    try:
        await collection.create_indexes([chain_index_model(caps)])
    except OperationFailure as exc:
        if exc.code not in _INDEX_CONFLICT:
            raise
        log.warning("keeping the existing chain index %r (%s)", CHAIN_INDEX[0], exc)


# --- probes of a tenant's chain ------------------------------------------------

Probe = Callable[[int], Awaitable[dict[str, Any] | None]]


def seq_probes(events: Any, tenant: str, projection: dict[str, int]) -> tuple[Probe, Probe]:
    """``(first_from, exact)`` probes of ``tenant``'s chain in the collection ``events``.

    For :func:`find_head` and :func:`first_seq_where`; both are index lookups on
    the unique ``(tenant, seq)`` index, returning only ``projection``'s fields.
    """

    async def first_from(k: int) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await events.find_one(
            {"tenant": tenant, "seq": {"$gte": k}}, projection=projection, sort=[("seq", 1)]
        )
        return doc

    async def exact(k: int) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await events.find_one(
            {"tenant": tenant, "seq": k}, projection=projection
        )
        return doc

    return first_from, exact


async def find_head(
    first_from: Probe, exact: Probe | None = None, *, start_seq: int = 1
) -> dict[str, Any] | None:
    """The stored event with the highest seq, by galloping and bisecting.

    ``first_from(k)`` returns the event with the smallest seq ``>= k`` (an
    ascending index probe; SecantusDB does not walk indexes backwards, so
    ``sort(seq, -1)`` would scan). O(log n) probes.

    ``exact(k)``, if given, returns the event with seq ``k``: a point lookup, cheap
    on every server, where ``first_from(k)`` for a small ``k`` makes SecantusDB
    fetch and sort every later event (30 s for a 20,000-event tenant). An intact
    chain has no gaps, so galloping on point lookups finds the head; one
    ``first_from`` past it confirms nothing lies beyond. A damaged chain (a gap)
    falls through to range probes from the first event past the gap.

    ``start_seq`` (the seq after a tenant's purge marker: seq 1 is gone) is where
    the point lookups begin; when no event has it, the probes start from seq 1.
    """
    if exact is not None and start_seq > 1 and (start := await exact(start_seq)) is not None:
        lo = await _gallop(exact, start)
        beyond = await first_from(int(lo["seq"]) + 1)
        return lo if beyond is None else await _gallop(first_from, beyond)
    if exact is not None and (start := await exact(1)) is not None:
        lo = await _gallop(exact, start)
        beyond = await first_from(int(lo["seq"]) + 1)
        if beyond is None:
            return lo
        start = beyond  # a gap: go on with range probes from there
    elif (start := await first_from(1)) is None:
        return None
    return await _gallop(first_from, start)


async def _gallop(probe: Probe, lo: dict[str, Any]) -> dict[str, Any]:
    """From the stored ``lo``, the highest event ``probe`` reaches: gallop, then bisect."""
    step = 1
    while (nxt := await probe(int(lo["seq"]) + step)) is not None:
        lo, step = nxt, step * 2
    hi = int(lo["seq"]) + step  # nothing at or after hi
    while int(lo["seq"]) + 1 < hi:
        mid = (int(lo["seq"]) + 1 + hi) // 2
        found = await probe(mid)
        if found is None:
            hi = mid
        else:
            lo = found
    return lo


async def first_seq_where(
    probe: Probe, head_seq: int, pred: Callable[[dict[str, Any]], bool]
) -> int:
    """Smallest seq in ``1..head_seq`` whose event satisfies the monotone ``pred``.

    Returns ``head_seq + 1`` when none does. Used to map ``--since/--until``
    times to seqs (``received_at`` grows with seq within a partition).
    """
    lo, hi = 1, head_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        doc = await probe(mid)
        if doc is not None and pred(doc):
            hi = mid
        else:
            lo = mid + 1
    return lo


async def chain_head(
    events: Any,
    tenant: str,
    projection: dict[str, int],
    caps: StoreCapabilities | None = None,
) -> dict[str, Any] | None:
    """``tenant``'s stored event with the highest seq (``projection``'s fields), or None.

    With ``backward_index_scan`` one descending index lookup; otherwise
    :func:`find_head` on :func:`seq_probes`, from the seq after the tenant's purge
    marker when there is one (``retention_purges`` in ``events``' database: after a
    purge seq 1 is gone, and a range probe from it is slow on SecantusDB). Both
    consider only events with a numeric ``seq >= 1``.
    """
    caps = caps or await capabilities_of(events)
    if caps.backward_index_scan:
        doc: dict[str, Any] | None = await events.find_one(
            {"tenant": tenant, "seq": {"$gte": 1}}, projection=projection, sort=[("seq", -1)]
        )
        return doc
    marker = await events.database[PURGES_COLLECTION].find_one({"_id": tenant}, {"through_seq": 1})
    through = marker.get("through_seq") if marker else None
    start_seq = through + 1 if isinstance(through, int) and through > 0 else 1
    return await find_head(*seq_probes(events, tenant, projection), start_seq=start_seq)
