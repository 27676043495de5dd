"""``auditstream migrate-ids`` against SecantusDB: old-layout stores move to (tenant, id).

The old layout had ``_id`` = the client id and no ``id`` field. Migrating keeps
seq, content_hash, hash, corrections and erasures, so every chain still
verifies; it resumes after a crash and does nothing the second time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events.chain import ERASED_FIELDS, GENESIS, aiter_list, seal, verify_chain
from audit_events.codec import current_layout, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENT_INDEXES, MIGRATE_IDS_COLLECTION, event_key
from auditstream.migrate_ids import MigrationConflict, migrate
from stream_processor.chain import OldLayout, check_layout, ensure_chain_index

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def old_layout_store(tenant: str, n: int) -> list[dict[str, Any]]:
    """``n`` chained events of ``tenant`` as the previous version stored them."""
    docs, prev = [], GENESIS
    for i in range(1, n + 1):
        event = AuditEvent(
            id=f"{tenant}-{i}",
            tenant=tenant,
            action="invoice.update",
            occurred_at=T0 + timedelta(seconds=i),
            actor={"id": "alice", "type": "user"},
            targets=[{"type": "invoice", "id": str(i)}],
            description=f"invoice {i}",
        )
        doc = event_to_document(event, T0 + timedelta(seconds=i, milliseconds=5))
        prev = seal(doc, i, prev)
        docs.append({"_id": doc["id"], **{k: v for k, v in doc.items() if k not in ("_id", "id")}})
    # a corrected event and an erased one, as the control applier leaves them
    docs[1]["corrections"] = [
        {"event_id": "ctl-1", "by": "admin", "at": T0, "reason": "r", "set": {"description": "x"}}
    ]
    for name in ERASED_FIELDS:
        docs[2].pop(name, None)
    docs[2]["erased"] = {"event_id": "ctl-2", "by": "admin", "at": T0, "reason": "gdpr"}
    return docs


async def prepare(store: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    await store.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    await ensure_chain_index(store)
    await store.insert_many(docs)


async def chains_verify(store: AsyncCollection[dict[str, Any]], tenants: list[str]) -> None:
    for tenant in tenants:
        docs = await store.find({"tenant": tenant}).sort([("seq", 1), ("_id", 1)]).to_list()
        report = await verify_chain(tenant, aiter_list(docs), [], None)
        assert report.ok and report.checked == len(docs), report


def run_cli(settings: AuditSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
    env.update(settings_env(settings))
    env["AUDITSTREAM_JWT_SECRET"] = "unused-by-migrate-ids-0123456789abcdef"
    return subprocess.run(
        [sys.executable, "-m", "auditstream", "migrate-ids", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_ids_keeps_chains_resumes_and_is_idempotent(
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    client: Client,
    auth: Callable[..., dict[str, str]],
) -> None:
    old = old_layout_store("acme", 7) + old_layout_store("globex", 4)
    await prepare(store, old)
    await chains_verify(store, ["acme", "globex"])  # the old layout verifies (event_fields)
    with pytest.raises(OldLayout):  # the processor refuses to write next to it
        await check_layout(store)

    # A run that died after deleting two old documents, before inserting their new forms.
    journal = store.database[MIGRATE_IDS_COLLECTION]
    crashed = old[:2]
    await journal.insert_many(
        [
            {"_id": event_key(d["tenant"], d["_id"]), "old_id": d["_id"], "doc": current_layout(d)}
            for d in crashed
        ]
    )
    await store.delete_many({"_id": {"$in": [d["_id"] for d in crashed]}})

    result = await migrate(store, journal, batch_size=3)
    assert (result.resumed, result.migrated) == (2, len(old) - 2)
    assert await journal.count_documents({}) == 0
    docs = {d["_id"]: d async for d in store.find({})}
    assert sorted(docs) == sorted(event_key(d["tenant"], d["_id"]) for d in old)
    for before in old:
        after = docs[event_key(before["tenant"], before["_id"])]
        assert after["id"] == before["_id"]
        assert {k: v for k, v in after.items() if k not in ("_id", "id")} == {
            k: v for k, v in before.items() if k != "_id"
        }  # seq, hashes, corrections, erasure: unchanged
    await chains_verify(store, ["acme", "globex"])
    await check_layout(store)  # the processor may start now

    got = await client.get("/v1/events/acme-2", headers=auth("acme"))
    assert got.status_code == 200
    body = await got.get_json()
    assert (body["id"], body["description"]) == ("acme-2", "x")  # the correction's overlay
    assert (await client.get("/v1/events/acme-3", headers=auth("acme"))).status_code == 410
    assert (await client.get("/v1/events/acme-2", headers=auth("globex"))).status_code == 404

    again = run_cli(settings)  # the registered command; a migrated store stays as it is
    assert again.returncode == 0, again.stderr
    assert "0 event(s) of the old layout" in again.stdout and "migrated 0 event(s)" in again.stdout
    assert {d["_id"]: d async for d in store.find({})} == docs


async def test_migrate_ids_refuses_when_a_new_id_is_already_taken(
    store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    old = old_layout_store("acme", 3)
    await prepare(store, old[:1])
    # A processor of the new version stored the same event again, at the next seq.
    clash = {**current_layout(old[0]), "seq": 2}
    await store.insert_one(clash)
    journal = store.database[MIGRATE_IDS_COLLECTION]
    with pytest.raises(MigrationConflict, match="already stored under their new _id"):
        await migrate(store, journal)
    assert await store.find_one({"_id": "acme-1"}) == old[0]  # nothing changed
    assert await journal.count_documents({}) == 0
    failed = run_cli(settings)
    assert failed.returncode == 1 and "acme/acme-1" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
