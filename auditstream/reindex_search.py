"""``auditstream reindex-search``: give stored events today's ``search`` array.

Since issue 18 the ``search`` array of an event holds, beside the ``q`` words,
one index token per indexed list filter (``*``, ``c:<action>``, ``a:<actor id>``,
``t:<target id>``; :func:`audit_events.codec.document_search_terms`), and the
single index ``tenant_search_time`` serves every list filter. Events stored by
an earlier version lack the tokens: lists would not find them until this
command has rewritten their ``search`` array. Only ``search`` changes: it is
not part of the content hash nor of the chain (``seq``, ``content_hash``,
``hash`` stay), so every chain and signed checkpoint still verifies.

One pass walks the collection in ``_id`` order, ``batch_size`` documents a step,
and sets ``search`` where it differs from what the fields give today (an erased
event keeps only the tokens of its action and kept targets). Each update is
conditional on the ``search`` value and erasure state it read, so a concurrent
erasure wins. The position after each step is kept in the ``reindex_search``
collection: an interrupted pass resumes there; a run after a finished pass
starts a new full pass (which changes nothing on a store already done:
idempotent). Processors and API may run meanwhile (docs/operations.md, "Index
changes", gives the rollout order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pymongo comes with the processor/api extras, not the base install
    from pymongo.asynchronous.collection import AsyncCollection

from audit_events.codec import document_search_terms
from audit_events.connections import mongo_write_concern
from audit_events.settings import (
    AuditSettings,
    SettingsError,
    load_settings,
    mongo_client_options,
)
from audit_events.storage import EVENTS_COLLECTION, REINDEX_SEARCH_COLLECTION

FIELDS = {"search": 1, "action": 1, "description": 1, "actor": 1, "targets": 1, "erased": 1}


@dataclass
class ReindexResult:
    scanned: int = 0
    updated: int = 0
    resumed_after: Any = None  # the _id an interrupted pass stopped after
    seconds: float = 0.0


async def reindex(
    events: AsyncCollection[dict[str, Any]],
    journal: AsyncCollection[dict[str, Any]],
    *,
    batch_size: int = 500,
    on_progress: Callable[[ReindexResult], None] | None = None,
) -> ReindexResult:
    """One full pass over ``events`` (resuming an interrupted one); returns the counts."""
    started = time.perf_counter()
    key = {"_id": events.name}
    state = await journal.find_one(key)
    result = ReindexResult()
    after: Any = None
    if state is not None and not state.get("done"):
        after = result.resumed_after = state.get("after")
    else:
        await journal.replace_one(
            key, {"done": False, "after": None, "started_at": datetime.now(UTC)}, upsert=True
        )
    where = {"_id": {"$gt": after}} if after is not None else {}
    # One cursor in _id order (SecantusDB materialises a query's whole range before
    # its limit: a query per batch would cost the rest of the collection each time).
    cursor = events.find(where, FIELDS).sort([("_id", 1)]).batch_size(batch_size)
    try:
        docs: list[dict[str, Any]] = []
        async for doc in cursor:
            docs.append(doc)
            if len(docs) >= batch_size:
                await _step(events, journal, key, docs, result, on_progress)
                docs = []
        if docs:
            await _step(events, journal, key, docs, result, on_progress)
    finally:
        await cursor.close()
    await journal.update_one(
        key, {"$set": {"done": True, "finished_at": datetime.now(UTC), "after": None}}
    )
    result.seconds = time.perf_counter() - started
    return result


async def _step(
    events: AsyncCollection[dict[str, Any]],
    journal: AsyncCollection[dict[str, Any]],
    key: dict[str, Any],
    docs: list[dict[str, Any]],
    result: ReindexResult,
    on_progress: Callable[[ReindexResult], None] | None,
) -> None:
    """Rewrite the ``search`` arrays of ``docs`` that differ, then record the position."""
    from pymongo import UpdateOne

    updates = []
    for doc in docs:
        want = document_search_terms(doc)
        have = doc.get("search")
        if have == want:
            continue
        # Only if the document is as read: a concurrent erasure wins.
        guard: dict[str, Any] = {
            "_id": doc["_id"],
            "erased": {"$exists": "erased" in doc},
            "search": have if have is not None else {"$exists": False},
        }
        # The _id index by name: SecantusDB would otherwise scan for the guard's fields.
        updates.append(UpdateOne(guard, {"$set": {"search": want}}, hint="_id_"))
    if updates:
        written = await events.bulk_write(updates, ordered=False)
        result.updated += written.modified_count
    result.scanned += len(docs)
    await journal.update_one(key, {"$set": {"after": docs[-1]["_id"]}})
    if on_progress is not None:
        on_progress(result)


async def _run(settings: AuditSettings, batch_size: int) -> ReindexResult:
    from pymongo import AsyncMongoClient

    wc = mongo_write_concern(settings)
    # Selection and connect bounded by mongo_timeout_ms (and TLS from the settings);
    # single operations not: a pass over a large collection may rightly take long.
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_uri, tz_aware=True, **mongo_client_options(settings, operations=False)
    )
    try:
        db = client[settings.mongo_db]
        events = db[EVENTS_COLLECTION].with_options(write_concern=wc)
        journal = db[REINDEX_SEARCH_COLLECTION].with_options(write_concern=wc)

        def progress(done: ReindexResult) -> None:
            click.echo(f"  scanned {done.scanned}, updated {done.updated}")

        return await reindex(events, journal, batch_size=batch_size, on_progress=progress)
    finally:
        await client.close()


@click.command("reindex-search")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Documents read per step.",
)
def reindex_search(batch_size: int) -> None:
    """Give stored events the search tokens the list filters read (issue 18).

    Rewrites only each event's `search` array (not hashed: chains and checkpoints
    still verify). Resumable (an interrupted pass goes on where it stopped) and
    idempotent (a new pass changes only what differs). Run it before upgrading the
    API, and once more after every process runs this version (docs/operations.md,
    "Index changes"); processors and API may run meanwhile.
    """
    try:
        settings = load_settings()
        settings.require("mongo_uri")
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    result = asyncio.run(_run(settings, batch_size))
    resumed = " (resumed an interrupted pass)" if result.resumed_after is not None else ""
    click.echo(
        f"scanned {result.scanned} event(s), updated {result.updated}{resumed}"
        f" in {result.seconds:.1f}s"
    )
