"""The tenant chain on real servers: tamper matrix, checkpoints, corrections, erasure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION
from query_api.verify import gather_checkpoints, verify_tenant
from stream_processor.chain import ensure_chain_index
from tests.conftest import ProcessorProcess
from tests.helpers import by_seq, eventually, run_cli

pytestmark = pytest.mark.integration
PRIVATE, PUBLIC = chain.generate_keypair()
ADMIN = "events:read events:write events:admin"


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    """Checkpoint after every batch, so the newest event is always signed."""
    return settings.model_copy(
        update={"checkpoint_public_key": PUBLIC, "checkpoint_every_events": 1}
    )


def start_processor(processors: Callable[..., ProcessorProcess]) -> ProcessorProcess:
    return processors(AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE)


def make_events(n: int, prefix: str = "evt") -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i:03d}",
            "tenant": "acme",
            "action": "invoice.update",
            "actor": {"id": f"user{i % 3}", "name": "Alice"},
            "targets": [{"type": "invoice", "id": str(i)}],
            "description": f"updated invoice {i}",
            "changes": {"total": {"old": i, "new": i + 1}},
            "metadata": {"amount": i * 1.25, "tags": ["a", "b"]},
        }
        for i in range(n)
    ]


async def ingest(
    client: Client,
    auth: Callable[..., dict[str, str]],
    store: AsyncCollection[dict[str, Any]],
    events: list[dict[str, Any]],
) -> None:
    resp = await client.post("/v1/events", json={"events": events}, headers=auth())
    assert resp.status_code == 202
    total = await store.count_documents({}) + len(events)
    checkpoints = store.database[CHECKPOINTS_COLLECTION]

    async def stored_and_signed() -> bool:
        count = await store.count_documents({})
        head = await checkpoints.find_one({"tenant": "acme", "seq": count})
        return count == total and head is not None

    await eventually(stored_and_signed, timeout=90)


async def copy_store(
    db: AsyncDatabase[dict[str, Any]], name: str
) -> AsyncCollection[dict[str, Any]]:
    """A copy of the events collection (with the unique chain index) to tamper with."""
    copy = db[name]
    docs = [d async for d in db["events"].find({})]
    await ensure_chain_index(copy)
    await copy.insert_many(docs)
    return copy


async def verify(settings: AuditSettings, events: AsyncCollection[dict[str, Any]]) -> Any:
    checkpoints, sources = await gather_checkpoints(settings, events, "acme")
    assert sources["kafka"] is not None and sources["kafka"] >= 1
    return await verify_tenant(events, "acme", checkpoints, PUBLIC)


async def test_tamper_matrix(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    start_processor(processors)
    await ingest(client, auth, store, make_events(30))
    db = store.database
    seqs = sorted([d["seq"] async for d in store.find({}, {"seq": 1})])
    assert seqs == list(range(1, 31))  # 1, 2, 3, … no gaps

    untouched = await verify(settings, store)
    assert (untouched.ok, untouched.checked, untouched.unsigned_tail) == (True, 30, 0)
    results: dict[str, tuple[bool, int | None, str | None]] = {}

    edited = await copy_store(db, "t_edit")
    await edited.update_one({"tenant": "acme", "seq": 10}, {"$set": {"actor.id": "mallory"}})
    results["edit one field"] = _verdict(await verify(settings, edited))

    deleted = await copy_store(db, "t_delete")
    await deleted.delete_one({"tenant": "acme", "seq": 12})
    results["delete one event"] = _verdict(await verify(settings, deleted))

    swapped = await copy_store(db, "t_swap")
    a, b = await by_seq(swapped, 15), await by_seq(swapped, 16)
    await swapped.update_one({"_id": a["_id"]}, {"$set": {"seq": -1}})
    await swapped.update_one({"_id": b["_id"]}, {"$set": {"seq": 15}})
    await swapped.update_one({"_id": a["_id"]}, {"$set": {"seq": 16}})
    results["swap two seqs"] = _verdict(await verify(settings, swapped))

    inserted = await copy_store(db, "t_insert")
    await inserted.drop_index("tenant_seq")  # an attacker with admin rights can
    forged = dict(await by_seq(inserted, 20))
    forged["_id"], forged["id"] = "acme/forged-1", "forged-1"
    forged["description"] = "nothing to see"
    chain.seal(forged, 20, (await by_seq(inserted, 19))["hash"])
    await inserted.insert_one(forged)
    results["insert forged event"] = _verdict(await verify(settings, inserted))

    truncated = await copy_store(db, "t_truncate")
    await truncated.delete_many({"tenant": "acme", "seq": {"$gte": 28}})
    # the attacker also removes the stored checkpoints; the Kafka copy remains
    cps = db[CHECKPOINTS_COLLECTION]
    saved = [c async for c in cps.find({"seq": {"$gte": 28}})]
    await cps.delete_many({"seq": {"$gte": 28}})
    results["delete newest 3"] = _verdict(await verify(settings, truncated))
    await cps.insert_many(saved)

    assert results == {
        "edit one field": (False, 10, "edited"),
        "delete one event": (False, 12, "deleted"),
        "swap two seqs": (False, 15, "reordered"),
        "insert forged event": (False, 20, "inserted"),
        "delete newest 3": (False, 28, "truncated"),
    }
    # the untouched store still verifies, via the API and the CLI
    resp = await client.get("/v1/verify", headers=auth())
    body = await resp.get_json()
    assert resp.status_code == 200 and body["ok"] is True and body["checked"] == 30
    assert body["checkpoint_sources"]["kafka"] >= 1
    key = await (await client.get("/v1/verify/public-key")).get_json()
    assert key["public_key"] == PUBLIC
    cli = run_cli(settings, "verify", "--tenant", "acme", "--quiet")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ok  acme: 30 events checked" in cli.stdout


def _verdict(report: chain.Report) -> tuple[bool, int | None, str | None]:
    print(f"tamper → ok={report.ok} seq={report.first_bad_seq} {report.reason}: {report.detail}")
    return report.ok, report.first_bad_seq, report.reason


async def test_verify_walks_only_the_slice_received_in_since_until(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    start_processor(processors)
    for part in ("a", "b", "c"):  # three requests: three receive times
        await ingest(client, auth, store, make_events(4, part))
    docs = [d async for d in store.find({}, {"id": 1, "seq": 1, "received_at": 1}).sort("seq", 1)]
    b = [d for d in docs if d["id"].startswith("b-")]
    c = [d for d in docs if d["id"].startswith("c-")]
    since, until = b[0]["received_at"], c[0]["received_at"]
    assert since < until and [d["seq"] for d in b] == [5, 6, 7, 8]
    params = {"since": since.isoformat(), "until": until.isoformat()}
    resp = await client.get("/v1/verify", query_string=params, headers=auth())
    report = await resp.get_json()
    assert resp.status_code == 200, report
    assert (report["ok"], report["checked"]) == (True, 4)


async def test_corrections_and_erasure_go_through_the_log(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    start_processor(processors)
    await ingest(client, auth, store, make_events(5, "c"))
    admin = auth(scopes=ADMIN)

    # a correction needs events:admin, a reason and valid fields
    fix = {"reason": "wrong amount", "set": {"description": "credited invoice 1"}}
    assert (await client.put("/v1/events/c-001", json=fix, headers=auth())).status_code == 403
    bad = await client.put("/v1/events/c-001", json={"set": {"id": "x"}}, headers=admin)
    assert bad.status_code == 422
    resp = await client.put("/v1/events/c-001?wait=true", json=fix, headers=admin)
    assert resp.status_code == 200, await resp.get_data()
    view = await resp.get_json()
    assert view["description"] == "credited invoice 1"
    [record] = view["corrections"]
    assert (record["by"], record["reason"]) == ("tester", "wrong amount")
    assert record["previous"] == {"description": "updated invoice 1"}
    stored = await store.find_one({"_id": "acme/c-001"})
    assert stored is not None and stored["description"] == "updated invoice 1"  # original kept
    got = await (await client.get("/v1/events/c-001", headers=auth())).get_json()
    assert got["description"] == "credited invoice 1"

    # erasure: 204 once applied; 410 with who/when; gone from lists; chain still verifies
    resp = await client.delete("/v1/events/c-002?wait=true&reason=gdpr", headers=admin)
    assert resp.status_code == 204
    gone = await client.get("/v1/events/c-002", headers=auth())
    assert gone.status_code == 410
    erased = (await gone.get_json())["erased"]
    assert (erased["by"], erased["reason"]) == ("tester", "gdpr") and erased["at"]
    doc = await store.find_one({"_id": "acme/c-002"})
    assert doc is not None
    assert {"actor", "targets", "description", "changes", "metadata"} & doc.keys() == set()
    assert {"seq", "content_hash", "hash", "tenant", "occurred_at"} <= doc.keys()
    listed = await (await client.get("/v1/events?limit=100", headers=auth())).get_json()
    ids = [e["id"] for e in listed["data"]]
    assert "c-002" not in ids and "c-001" in ids
    # both control events are themselves audit events in the chain
    actions = {e["action"] for e in listed["data"]}
    assert {chain.CORRECTED_ACTION, chain.ERASED_ACTION} <= actions

    # a second erasure is a no-op; correcting an erased event is refused
    again = await client.delete("/v1/events/c-002?reason=again", headers=admin)
    assert again.status_code == 204
    refused = await client.put("/v1/events/c-002", json=fix, headers=admin)
    assert refused.status_code == 409
    forged = {"tenant": "acme", "action": chain.ERASED_ACTION}
    assert (await client.post("/v1/events", json=forged, headers=auth())).status_code == 422

    async def signed_head() -> bool:
        count = await store.count_documents({})
        cp = await store.database[CHECKPOINTS_COLLECTION].find_one({"seq": count})
        return count == 7 and cp is not None

    await eventually(signed_head)
    report = await verify(settings, store)
    assert (report.ok, report.checked, report.erased, report.corrected) == (True, 7, 1, 1)
