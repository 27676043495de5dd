"""The API's data layer: every read and wait the routes make, behind one interface.

Routes ask an :class:`EventStore` for what they need (a list page, one event,
a history page, an object's state ``as_of``, an export's documents, a wait
until events are stored or a control event applied, the signed checkpoints) and
never hold a database client, so their logic is testable against
:class:`MemoryEventStore` (as httpx puts I/O behind a transport and ships a
``MockTransport``). :class:`MongoEventStore` is the real one:

- list and history pages read one index range in order on MongoDB, and on
  SecantusDB (which materialises a range before ``limit``) bounded windows that
  widen until the page is full (:func:`query_api.listing.read_page`, issue 18),
  never the slow ``erased: {$exists: false}`` clause;
- exports and the ``as_of`` fold read one index range in order (the query's own
  ``since``/``until``) and drop what the other filters exclude here
  (:func:`query_api.listing.read_all`), the same shape, so they use the index too;
  on SecantusDB an export reads that range in windows of about
  ``listing.WINDOW_EVENTS`` events, cut at times sampled along the tenant's chain;
- waits look again when the processor announces a stored batch
  (:class:`query_api.stored_waits.StoredWaits`), not on a timer.

Documents are returned as stored (``document_to_api`` makes the API view).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

import pymongo
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from audit_events.chain import document_content_hash
from audit_events.masking import MASKING_COLLECTION, Masker, MaskingRule
from audit_events.storage import CHECKPOINTS_COLLECTION, event_key
from query_api.asof import AsOfFolder
from query_api.listing import MATCHED_FIELDS, matcher, read_all, read_page
from query_api.query import MAX_LIMIT, ListQuery
from query_api.stored_waits import Confirmed, Expectation, StoredWaits

Masked = tuple[Masker, str]  # (redact every masked path, the sent event's hash so redacted)
MaskedLoader = Callable[[], Awaitable[Mapping[tuple[str, str], Masked] | None]]


def _stored_as_sent(doc: Document, digest: str, masked: Masked | None) -> bool:
    """Whether the stored ``doc`` is the event whose content hash is ``digest``.

    Masked before storage, its content hash differs: then the two are compared with
    every masked path redacted (an id reused with other content still differs,
    unless only in masked values, which the processor dead-letters: a 202 then).
    """
    if doc.get("content_hash") == digest:
        return True
    if masked is None:
        return False
    redact, expected = masked
    return document_content_hash(redact.apply(doc)) == expected


#: What folding needs of each event of an object's timeline.
FOLD_FIELDS = ("id", "occurred_at", "changes", "crud", "outcome", "targets", "erased")
FOLD_BATCH = 500
EXPORT_BATCH = 1000
#: ``/v1/suggestions`` reads this many of the tenant's newest events (not erased):
#: its cost stays the same however many events the tenant holds; a value seen only
#: in older events is not offered (typing it whole still searches for it).
SUGGESTION_EVENTS = 2000

Document = dict[str, Any]


class StoreUnavailable(Exception):
    """The store did not answer a wait in time (the caller answers 202, not 5xx)."""


class EventStore(Protocol):
    async def list_page(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> list[Document]:
        """Up to ``query.limit + 1`` matching documents in page order."""

    async def get(self, tenant: str, event_id: str) -> Document | None:
        """``tenant``'s event ``event_id`` (erased ones too), or None."""

    async def history_page(self, tenant: str, query: ListQuery) -> list[Document]:
        """Like :meth:`list_page` without erased events (``query`` names the target)."""

    async def state_as_of(
        self, tenant: str, target_type: str, target_id: str, as_of: datetime
    ) -> dict[str, Any]:
        """The object's known field values at ``as_of`` (:class:`AsOfFolder`)."""

    def export(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> AsyncIterator[Document]:
        """Every matching document in the query's order, read in batches."""

    def expect_stored(
        self, wanted: Mapping[tuple[str, str], str]
    ) -> AbstractContextManager[Expectation | None]:
        """Register for the processor's announcements of ``wanted``; entered *before*
        the events are published, its value goes to :meth:`wait_stored`."""

    async def wait_stored(
        self,
        wanted: Mapping[tuple[str, str], str],
        seconds: float,
        masked: MaskedLoader | None = None,
        *,
        expected: Expectation | None = None,
    ) -> bool:
        """True once every ``{(tenant, id): content hash}`` is stored with that hash.

        ``masked``: loads, for events of tenants with masking rules, what to
        compare instead (awaited only when a stored document's hash differs): the
        stored document may differ in the masked paths, and counts as stored when
        its content hash, with those paths redacted, is the expected
        :class:`Masked` hash. ``expected`` (from :meth:`expect_stored`) lets the
        processor's announcement confirm them without a look at the store (and
        without a settle of the cache: the announcement follows the bumps).
        False after ``seconds``, or when the store is away (logged by the caller).
        """

    async def masking_rules(self, tenant: str) -> list[MaskingRule]:
        """Every rule of every masking version the tenant ever had (empty: none)."""

    async def wait_applied(
        self,
        tenant: str,
        event_id: str,
        control_id: str | None,
        seconds: float,
        before: Document | None = None,
    ) -> Document | None:
        """The event once correction ``control_id`` (None: the erasure) is applied.

        ``before``: the event as read before the change (an erasure removes its
        targets, a correction may change them: their histories are settled too)."""

    async def checkpoints(self, tenant: str) -> list[Document]:
        """``tenant``'s signed checkpoints as stored, by seq."""

    async def tenants(self) -> list[str]:
        """Every tenant with stored events, sorted."""

    async def suggestions(
        self, tenant: str, paths: Sequence[str], limit: int
    ) -> dict[str, list[str]]:
        """Per path of ``paths`` (e.g. ``targets.type``), up to ``limit`` distinct
        string values among ``tenant``'s newest :data:`SUGGESTION_EVENTS` events
        that are not erased, sorted."""

    async def times(
        self, tenant: str, query: ListQuery, include_erased: bool, limit: int
    ) -> list[datetime]:
        """``occurred_at`` of up to ``limit`` matching events, any order."""


def distinct_strings(
    docs: Iterable[Document], paths: Sequence[str], limit: int
) -> dict[str, list[str]]:
    """Per path (``field`` or ``field.sub``; a list of objects counts each item),
    the first ``limit`` of the distinct string values ``docs`` hold, sorted."""
    found: dict[str, set[str]] = {path: set() for path in paths}
    for doc in docs:
        for path, values in found.items():
            head, _, rest = path.partition(".")
            items = doc.get(head)
            for item in items if isinstance(items, list) else [items]:
                value = item.get(rest) if rest and isinstance(item, dict) else item
                if isinstance(value, str):
                    values.add(value)
    return {path: sorted(values)[:limit] for path, values in found.items()}


def _applied(doc: Document | None, control_id: str | None) -> bool:
    if doc is None:
        return False
    if control_id is None:
        return "erased" in doc
    return any(c.get("event_id") == control_id for c in doc.get("corrections") or ())


def _timeline_query(target_type: str, target_id: str) -> ListQuery:
    return ListQuery({"target_type": target_type, "target_id": target_id}, "asc", MAX_LIMIT, None)


class MongoEventStore:
    """:class:`EventStore` on MongoDB (or SecantusDB): the API's only event queries."""

    def __init__(
        self,
        events: AsyncCollection[Document],
        *,
        exports: AsyncCollection[Document] | None = None,
        waits: StoredWaits | None = None,
        settle: Callable[[list[Document]], Awaitable[None]] | None = None,
    ) -> None:
        self.events = events
        # Awaited with the documents a wait found before it answers (ReadCache.settle:
        # the reads that follow the answer must not be served pages cached before).
        self._settle = settle
        # Exports read one long cursor from a client bounded per round trip
        # (Services.exports), not by timeoutMS, which would cut a long export off.
        self._exports = exports if exports is not None else events
        self._waits = waits or StoredWaits(None)  # no Redis: the fallback period only

    async def list_page(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> list[Document]:
        return await read_page(self.events, tenant, query, include_erased)

    async def get(self, tenant: str, event_id: str) -> Document | None:
        return await self.events.find_one({"_id": event_key(tenant, event_id), "tenant": tenant})

    async def history_page(self, tenant: str, query: ListQuery) -> list[Document]:
        return await read_page(self.events, tenant, query, include_erased=False)

    async def state_as_of(
        self, tenant: str, target_type: str, target_id: str, as_of: datetime
    ) -> dict[str, Any]:
        folder = AsOfFolder(as_of)
        query = _timeline_query(target_type, target_id)
        fields = dict.fromkeys(FOLD_FIELDS, 1)
        async for doc in read_all(self.events, tenant, query, False, fields, FOLD_BATCH):
            folder.add(doc)
        return folder.result(target_type, target_id)

    def export(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> AsyncIterator[Document]:
        # The search terms are the store's, not the event's (the q filter needs them).
        fields = None if "q" in query.filters else {"search": 0}
        return read_all(
            self._exports, tenant, query, include_erased, fields, EXPORT_BATCH, bounded=True
        )

    async def _wait(
        self, tenants: set[str], done: Callable[[], Awaitable[bool]], seconds: float
    ) -> bool:
        try:
            with pymongo.timeout(seconds):
                return await self._waits.wait_until(tenants, done, seconds)
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    def expect_stored(
        self, wanted: Mapping[tuple[str, str], str]
    ) -> AbstractContextManager[Expectation | None]:
        return self._waits.expect(wanted)

    async def wait_stored(
        self,
        wanted: Mapping[tuple[str, str], str],
        seconds: float,
        masked: MaskedLoader | None = None,
        *,
        expected: Expectation | None = None,
    ) -> bool:
        # Looked up by (tenant, id) and compared by content hash: an id its tenant
        # already used for another content is dead-lettered, never stored, so it
        # is not reported as stored; another tenant's events are never seen.
        keys = {event_key(tenant, eid): (tenant, eid) for tenant, eid in wanted}
        query: Document = {"_id": {"$in": sorted(keys)}}
        scopes = dict.fromkeys(("tenant", "action", "targets"), 1)  # ReadCache.settle's
        narrow: Document = {"content_hash": 1, **scopes}
        seen: list[Document] = []
        # Masking rules are read only when a stored hash differs from the sent one.
        rules: dict[str, Any] = {"loaded": masked is None, "masked": None}

        async def stored() -> bool:
            whole = rules["masked"] is not None  # redacting needs the whole document
            fields = {"search": 0} if whole else narrow
            found = {d["_id"]: d async for d in self.events.find(query, fields)}
            seen[:] = found.values()
            if len(found) != len(keys):
                return False
            compare = rules["masked"] or {}
            if all(
                _stored_as_sent(d, wanted[keys[k]], compare.get(keys[k])) for k, d in found.items()
            ):
                return True
            if rules["loaded"]:
                return False
            assert masked is not None
            rules["loaded"], rules["masked"] = True, (await masked()) or None
            return rules["masked"] is not None and await stored()

        tenants = {tenant for tenant, _ in wanted}
        try:
            with pymongo.timeout(seconds):
                if expected is None:
                    how = (
                        Confirmed.LOOKED
                        if await self._waits.wait_until(tenants, stored, seconds)
                        else None
                    )
                else:
                    how = await self._waits.wait_expected(expected, stored, seconds)
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc
        if how is None:
            return False
        if how is Confirmed.ANNOUNCED:
            # Settled already: the processor announces a batch's events in the round
            # trip that bumped the generations of their scopes, after the bumps
            # (stream_processor/sinks.py), and names an event only with the hash it
            # was sent with, i.e. with the scopes a settle would bump.
            return True
        # What the next reads must not be served from before: the stored documents
        # the look found (the processor may not have bumped their scopes yet).
        await self._settled(seen)
        return True

    async def _settled(self, documents: list[Document]) -> None:
        if self._settle is not None:
            await self._settle(documents)

    async def masking_rules(self, tenant: str) -> list[MaskingRule]:
        try:
            versions = self.events.database[MASKING_COLLECTION].find(
                {"tenant": tenant}, {"rules": 1}
            )
            return [MaskingRule.model_validate(r) async for v in versions for r in v["rules"]]
        except PyMongoError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def wait_applied(
        self,
        tenant: str,
        event_id: str,
        control_id: str | None,
        seconds: float,
        before: Document | None = None,
    ) -> Document | None:
        key = event_key(tenant, event_id)
        where: Document = {"_id": key, "tenant": tenant}
        where.update(
            {"erased": {"$exists": True}}
            if control_id is None
            else {"corrections.event_id": control_id}
        )
        found: list[Document] = []

        async def applied() -> bool:
            doc = await self.events.find_one(where)
            if doc is not None:
                found.append(doc)
            return doc is not None

        if not await self._wait({tenant}, applied, seconds):
            return None
        await self._settled([*([before] if before else []), found[-1]])
        return found[-1]

    async def checkpoints(self, tenant: str) -> list[Document]:
        coll = self.events.database[CHECKPOINTS_COLLECTION]
        return [
            {k: v for k, v in cp.items() if k != "_id"}
            async for cp in coll.find({"tenant": tenant}).sort([("seq", 1)])
        ]

    async def tenants(self) -> list[str]:
        found = await self.events.distinct("tenant")
        return sorted(t for t in found if isinstance(t, str))

    async def suggestions(
        self, tenant: str, paths: Sequence[str], limit: int
    ) -> dict[str, list[str]]:
        # The list's own pages, newest first (index ranges; bounded windows on a
        # store that materialises before limit), only the fields needed.
        fields = dict(MATCHED_FIELDS)  # no path under one it keeps (MongoDB: a collision)
        fields.update((p, 1) for p in paths if p.partition(".")[0] not in fields)
        newest: list[Document] = []
        cursor: tuple[datetime, str] | None = None
        while len(newest) < SUGGESTION_EVENTS:
            size = min(MAX_LIMIT, SUGGESTION_EVENTS - len(newest))
            query = ListQuery({}, "desc", size, cursor)
            docs = await read_page(self.events, tenant, query, False, projection=fields)
            newest += docs[:size]
            if len(docs) <= size:
                break
            cursor = (docs[size - 1]["occurred_at"], docs[size - 1]["_id"])
        return distinct_strings(newest, paths, limit)

    async def times(
        self, tenant: str, query: ListQuery, include_erased: bool, limit: int
    ) -> list[datetime]:
        # The list's index range (read_all: no ``erased`` clause, which made the
        # store scan the collection), only the fields the matcher reads; bounded
        # by ``limit``.
        found: list[datetime] = []
        docs = read_all(self.events, tenant, query, include_erased, MATCHED_FIELDS)
        async with contextlib.aclosing(docs):
            async for doc in docs:
                found.append(doc["occurred_at"])
                if len(found) >= limit:
                    break
        return found


class MemoryEventStore:
    """:class:`EventStore` in memory, for route tests: :meth:`put` is the processor.

    Same answers as :class:`MongoEventStore` for the same documents (the
    filters are :func:`query_api.listing.matcher`, the one both use).
    """

    def __init__(self, documents: Iterable[Document] = ()) -> None:
        self.documents: dict[str, Document] = {}
        self.saved_checkpoints: list[Document] = []
        self.reads = 0  # store reads, as a query counter would count them
        self.rules: dict[str, list[MaskingRule]] = {}  # masking rules per tenant
        self._changed = asyncio.Event()
        self.put(documents)

    def put(self, documents: Iterable[Document]) -> None:
        """Store (or replace) ``documents`` and wake the waits."""
        for doc in documents:
            self.documents[doc["_id"]] = doc
        self._changed.set()
        self._changed = asyncio.Event()

    def _matching(self, tenant: str, query: ListQuery, include_erased: bool) -> list[Document]:
        self.reads += 1
        match = matcher(query, include_erased)
        docs = [d for d in self.documents.values() if d.get("tenant") == tenant and match(d)]
        docs.sort(key=lambda d: (d["occurred_at"], d["_id"]), reverse=query.order == "desc")
        return docs

    async def list_page(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> list[Document]:
        return self._matching(tenant, query, include_erased)[: query.limit + 1]

    async def get(self, tenant: str, event_id: str) -> Document | None:
        self.reads += 1
        doc = self.documents.get(event_key(tenant, event_id))
        return doc if doc is not None and doc.get("tenant") == tenant else None

    async def history_page(self, tenant: str, query: ListQuery) -> list[Document]:
        return await self.list_page(tenant, query, include_erased=False)

    async def state_as_of(
        self, tenant: str, target_type: str, target_id: str, as_of: datetime
    ) -> dict[str, Any]:
        folder = AsOfFolder(as_of)
        for doc in self._matching(tenant, _timeline_query(target_type, target_id), False):
            folder.add(doc)
        return folder.result(target_type, target_id)

    async def export(
        self, tenant: str, query: ListQuery, include_erased: bool
    ) -> AsyncIterator[Document]:
        for doc in self._matching(tenant, query, include_erased):
            yield doc

    async def _wait(self, done: Callable[[], bool], seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return done()
        return True

    def expect_stored(
        self, wanted: Mapping[tuple[str, str], str]
    ) -> AbstractContextManager[Expectation | None]:
        return contextlib.nullcontext(None)  # put() wakes every wait

    async def wait_stored(
        self,
        wanted: Mapping[tuple[str, str], str],
        seconds: float,
        masked: MaskedLoader | None = None,
        *,
        expected: Expectation | None = None,
    ) -> bool:
        compare = (await masked() if masked is not None else None) or {}

        def stored() -> bool:
            return all(
                (doc := self.documents.get(event_key(*key))) is not None
                and _stored_as_sent(doc, digest, compare.get(key))
                for key, digest in wanted.items()
            )

        return await self._wait(stored, seconds)

    async def masking_rules(self, tenant: str) -> list[MaskingRule]:
        return list(self.rules.get(tenant, []))

    async def wait_applied(
        self,
        tenant: str,
        event_id: str,
        control_id: str | None,
        seconds: float,
        before: Document | None = None,
    ) -> Document | None:
        key = event_key(tenant, event_id)
        if await self._wait(lambda: _applied(self.documents.get(key), control_id), seconds):
            return self.documents[key]
        return None

    async def checkpoints(self, tenant: str) -> list[Document]:
        return sorted(
            (c for c in self.saved_checkpoints if c.get("tenant") == tenant),
            key=lambda c: c.get("seq", 0),
        )

    async def tenants(self) -> list[str]:
        return sorted({d["tenant"] for d in self.documents.values()})

    async def suggestions(
        self, tenant: str, paths: Sequence[str], limit: int
    ) -> dict[str, list[str]]:
        newest = self._matching(tenant, ListQuery({}, "desc", MAX_LIMIT, None), False)
        return distinct_strings(newest[:SUGGESTION_EVENTS], paths, limit)

    async def times(
        self, tenant: str, query: ListQuery, include_erased: bool, limit: int
    ) -> list[datetime]:
        return [d["occurred_at"] for d in self._matching(tenant, query, include_erased)][:limit]
