"""``auditstream migrate-ids``: move a store to per-tenant event identity, once.

Before, a stored event's ``_id`` was the client's id (one namespace for all
tenants) and the document had no ``id`` field. Now ``_id`` is
``event_key(tenant, id)`` and the client id is the ``id`` field
(:func:`audit_events.codec.current_layout`). ``seq``, ``content_hash``,
``hash``, corrections and erasures stay exactly as they are, so every chain and
every signed checkpoint still verifies.

``_id`` cannot change in place, so each old document is re-inserted under its
new ``_id``. Per batch:

1. read up to ``batch_size`` old-layout documents (no ``id`` field);
2. refuse to go on if a document already holds one of their new ``_id`` s (a
   processor of this version wrote next to the old layout: nothing is touched,
   the command names the ids and exits non-zero);
3. journal the new forms in the ``migrate_ids`` collection (durable);
4. delete the old documents, insert the new ones (the unique ``(tenant, seq)``
   index forbids the other order), then clear the journal.

A run that stops anywhere resumes from the journal first, so nothing is lost or
doubled; a second run over a migrated store finds nothing to do (idempotent).
Run it with the processors stopped (they refuse to start on an unmigrated
store). A full ``auditstream replay`` (without ``--since``) from a topic that
still holds every event migrates too: it rebuilds every document in the new
layout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pymongo comes with the processor/api extras, not the base install
    from pymongo.asynchronous.collection import AsyncCollection

from audit_events.codec import current_layout
from audit_events.connections import mongo_write_concern
from audit_events.settings import (
    AuditSettings,
    SettingsError,
    load_settings,
    mongo_client_options,
)
from audit_events.storage import EVENTS_COLLECTION, MIGRATE_IDS_COLLECTION

DUPLICATE_KEY = 11000
OLD_LAYOUT: dict[str, Any] = {"id": {"$exists": False}}


class MigrationConflict(Exception):
    """New-layout documents already exist for old ones: a human must look."""


@dataclass
class MigrationResult:
    migrated: int = 0
    resumed: int = 0  # documents finished from the journal of an interrupted run
    seconds: float = 0.0


async def _finish(
    events: AsyncCollection[dict[str, Any]], journal: AsyncCollection[dict[str, Any]]
) -> int:
    """Complete every journaled document: delete its old form, insert its new one."""
    from pymongo.errors import BulkWriteError

    entries = [e async for e in journal.find({})]
    if not entries:
        return 0
    old_ids = [e["old_id"] for e in entries]
    await events.delete_many({"_id": {"$in": old_ids}, **OLD_LAYOUT})
    docs = [e["doc"] for e in entries]
    try:
        await events.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors") or []
        if exc.details.get("writeConcernErrors") or any(
            e.get("code") != DUPLICATE_KEY for e in errors
        ):
            raise
        await _check_already_there(events, [docs[int(e["index"])] for e in errors])
    await journal.delete_many({"_id": {"$in": [e["_id"] for e in entries]}})
    return len(entries)


async def _check_already_there(
    events: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]
) -> None:
    """Duplicate keys on re-insert are fine only if an earlier run stored the same event."""
    for doc in docs:
        stored = await events.find_one(
            {"_id": doc["_id"]}, projection={"tenant": 1, "seq": 1, "content_hash": 1}
        )
        same = stored is not None and all(
            stored.get(k) == doc.get(k) for k in ("tenant", "seq", "content_hash")
        )
        if not same:
            raise MigrationConflict(
                f"event {doc['_id']} (seq {doc.get('seq')}) clashes with a stored document;"
                f" its old form is kept in the {MIGRATE_IDS_COLLECTION} collection"
            )


async def migrate(
    events: AsyncCollection[dict[str, Any]],
    journal: AsyncCollection[dict[str, Any]],
    *,
    batch_size: int = 500,
    on_progress: Callable[[int], None] | None = None,
) -> MigrationResult:
    """Rewrite every old-layout document of ``events``; resumable and idempotent."""
    started = time.perf_counter()
    result = MigrationResult(resumed=await _finish(events, journal))
    while True:
        old = await events.find(OLD_LAYOUT).limit(batch_size).to_list()
        if not old:
            break
        new = [current_layout(d) for d in old]
        taken = await events.find(
            {"_id": {"$in": [d["_id"] for d in new]}}, projection={"_id": 1}
        ).to_list()
        if taken:
            names = ", ".join(sorted(str(t["_id"]) for t in taken)[:5])
            raise MigrationConflict(
                f"{len(taken)} event(s) already stored under their new _id ({names}):"
                " a processor of this version ran before the migration; nothing was changed"
                " for them. Compare them with their old documents, then delete the copies"
                " or rebuild the store with `auditstream replay`"
            )
        await journal.insert_many(
            [{"_id": n["_id"], "old_id": o["_id"], "doc": n} for o, n in zip(old, new, strict=True)]
        )
        result.migrated += await _finish(events, journal)
        if on_progress is not None:
            on_progress(result.migrated)
    result.seconds = time.perf_counter() - started
    return result


async def _run(settings: AuditSettings, batch_size: int) -> MigrationResult:
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
        journal = db[MIGRATE_IDS_COLLECTION].with_options(write_concern=wc)
        todo = await events.count_documents(OLD_LAYOUT)
        click.echo(f"{todo} event(s) of the old layout in {settings.mongo_db}.{EVENTS_COLLECTION}")

        def progress(done: int) -> None:
            click.echo(f"  migrated {done}/{todo}")

        return await migrate(events, journal, batch_size=batch_size, on_progress=progress)
    finally:
        await client.close()


@click.command("migrate-ids")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Documents rewritten per step.",
)
def migrate_ids(batch_size: int) -> None:
    """Give stored events per-tenant ids (_id = tenant/id), keeping seq and hashes.

    One-shot, resumable and idempotent: run it once after upgrading, with the
    processors stopped (they refuse an unmigrated store). An interrupted run
    finishes where it stopped; a migrated store is left as it is. A full
    `auditstream replay` (no --since) from a complete topic migrates as well.
    """
    try:
        settings = load_settings()
        settings.require("mongo_uri")
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        result = asyncio.run(_run(settings, batch_size))
    except MigrationConflict as exc:
        raise click.ClickException(str(exc)) from None
    resumed = f" (+{result.resumed} from an interrupted run)" if result.resumed else ""
    click.echo(f"migrated {result.migrated} event(s){resumed} in {result.seconds:.1f}s")
