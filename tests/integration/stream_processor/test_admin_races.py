"""Admin changes that race each other, on real servers (a processor process, the API
in-process): concurrent erasures of one event, an erasure racing a correction,
concurrent retention changes. Every answer is a clear success or no-op (never 500),
the trail records what happened, the chain verifies, and a replay rebuilds the same
store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.codec import encode_event, event_to_document, event_wire_dict
from audit_events.schema import AuditEvent, limits_from
from audit_events.settings import AuditSettings
from audit_events.storage import event_key
from query_api.verify import verify_tenant
from stream_processor.chain import ChainWriter, Write, ensure_chain_index
from stream_processor.control import ApplyControls, ControlApplier, ControlGate
from stream_processor.decode import decode_batch
from stream_processor.records import Record
from stream_processor.replay import Replayer, store_digest
from tests.conftest import CONTROL_PRIVATE, ProcessorProcess
from tests.helpers import eventually, run_cli
from tests.integration.stream_processor.test_archive import topic_records

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"
SECRET = "Jane Secret-Person"


def make_events(n: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i:02d}",
            "tenant": "acme",
            "action": "invoice.update",
            "actor": {"id": f"user{i}", "name": SECRET},
            "targets": [{"type": "invoice", "id": str(i)}],
            "description": f"updated invoice {i} for {SECRET}",
            "metadata": {"email": "jane@example.com"},
        }
        for i in range(n)
    ]


async def stored(store: AsyncCollection[dict[str, Any]], count: int) -> None:
    async def done() -> bool:
        return await store.count_documents({"tenant": "acme"}) >= count

    await eventually(done, timeout=90, what=f"{count} stored events")


async def verified(settings: AuditSettings) -> None:
    cli = run_cli(settings, "verify", "--tenant", "acme")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ok  acme" in cli.stdout, cli.stdout


async def replay_rebuilds(settings: AuditSettings, store: AsyncCollection[dict[str, Any]]) -> None:
    before = await store_digest(store)
    docs = {d["_id"]: d async for d in store.find({})}
    result = await Replayer(settings, grace_seconds=0.5).run()
    assert result.swapped and result.ok, result
    after = {d["_id"]: d async for d in store.find({})}
    changed = {k: (docs.get(k), v) for k, v in after.items() if docs.get(k) != v}
    assert changed == {}, changed
    assert await store_digest(store) == before


async def test_concurrent_erasures_of_one_event_erase_it_once(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    processors()
    resp = await client.post("/v1/events", json={"events": make_events(3, "e")}, headers=auth())
    assert resp.status_code == 202
    await stored(store, 3)
    admin = auth(scopes=ADMIN)

    async def erase(i: int) -> tuple[int, bytes]:
        wait = "&wait=true" if i % 2 else ""
        r = await client.delete(f"/v1/events/e-01?reason=gdpr-{i}{wait}", headers=admin)
        return r.status_code, await r.get_data()

    answers = await asyncio.gather(*(erase(i) for i in range(8)))
    assert {status for status, _ in answers} <= {202, 204}, answers
    published = {orjson.loads(body)["id"] for status, body in answers if status == 202}

    async def erased() -> dict[str, Any] | None:
        doc = await store.find_one({"_id": "acme/e-01", "erased": {"$exists": True}})
        return doc

    doc = await eventually(erased, timeout=60, what="the erasure applied")

    # every erasure that was published is in the trail; the event names the one that erased it
    # (wait for the ids themselves: the ?wait=true requests that published answered 204,
    # without an id, so a count can be reached while a 202's erasure is still on its way)
    async def all_published_stored() -> bool:
        found = store.find({"tenant": "acme", "id": {"$in": sorted(published)}}, {"_id": 1})
        return len([d async for d in found]) == len(published)

    await eventually(all_published_stored, timeout=60, what="every published erasure stored")
    controls = [
        d
        async for d in store.find({"tenant": "acme", "action": chain.ERASED_ACTION}).sort("seq", 1)
    ]
    ids = [c["id"] for c in controls]
    assert published <= set(ids) and len(ids) >= 1
    assert doc["erased"]["event_id"] == ids[0]  # the first in the log erased it
    assert doc["erased"]["reason"] == controls[0]["description"]
    assert SECRET not in str(doc)
    gone = await client.get("/v1/events/e-01", headers=auth())
    assert gone.status_code == 410
    again = await client.delete("/v1/events/e-01?reason=late", headers=admin)
    assert again.status_code == 204  # sequentially: a no-op, nothing published
    assert await store.count_documents({"action": chain.ERASED_ACTION}) == len(ids)
    await verified(settings)
    report = await (await client.get("/v1/verify", headers=auth())).get_json()
    assert (report["ok"], report["erased"]) == (True, 1), report
    await replay_rebuilds(settings, store)


async def test_an_erasure_racing_a_correction_leaves_none_of_the_payload(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    """A correction published after the erasure of its event, but accepted before the
    erasure was applied, carries the event's payload (its metadata.set holds the
    corrected fields with the event's actor): it is erased too."""
    processors()
    n = 6
    resp = await client.post("/v1/events", json={"events": make_events(n, "r")}, headers=auth())
    assert resp.status_code == 202
    await stored(store, n)
    admin = auth(scopes=ADMIN)
    fix = {"reason": "typo", "set": {"description": f"credited {SECRET}"}}
    raced = 0
    for i in range(n):
        if i % 2:  # both at once: either order in the log
            gone, fixed = await asyncio.gather(
                client.delete(f"/v1/events/r-{i:02d}?reason=gdpr", headers=admin),
                client.put(f"/v1/events/r-{i:02d}", json=fix, headers=admin),
            )
        else:  # the erasure first in the log, the correction right behind it
            gone = await client.delete(f"/v1/events/r-{i:02d}?reason=gdpr", headers=admin)
            fixed = await client.put(f"/v1/events/r-{i:02d}", json=fix, headers=admin)
        assert gone.status_code in (202, 204), await gone.get_data()
        assert fixed.status_code in (202, 409), await fixed.get_data()  # 409: already erased
        raced += fixed.status_code == 202
    assert raced, "no correction was accepted before its erasure was applied"

    async def settled() -> bool:
        erased = await store.count_documents({"id": {"$regex": "^r-"}, "erased": {"$exists": 1}})
        total = await store.count_documents({"tenant": "acme"})
        return erased == n and total == n + n + raced

    await eventually(settled, timeout=60, what="every erasure and correction stored")
    docs = [d async for d in store.find({"tenant": "acme"})]
    leaks = [d["id"] for d in docs if SECRET in str(d)]
    assert leaks == [], f"erased payload kept in {leaks}"
    for d in docs:
        if d["action"] == chain.CORRECTED_ACTION:
            assert d["erased"]["event_id"] != d["id"], d  # erased by the event's erasure
    await verified(settings)
    await replay_rebuilds(settings, store)


def signed_control(action: str, target: str, **extra: Any) -> AuditEvent:
    """A control event as PUT/DELETE /v1/events/{id} publishes it (signed)."""
    unsigned = AuditEvent.model_validate(
        {
            "tenant": "acme",
            "action": action,
            "actor": {"id": "admin", "type": "admin"},
            "targets": [{"type": "audit_event", "id": target}],
            "description": "why",
            **extra,
        }
    )
    key = chain.load_private_key(CONTROL_PRIVATE)
    return AuditEvent.model_validate(chain.sign_control(key, event_wire_dict(unsigned)))


@pytest.mark.parametrize("same_batch", [False, True])
async def test_a_correction_applied_after_its_events_erasure_is_erased_and_verifies(
    same_batch: bool, store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    """The processor's applier on the real store, batch by batch (no race needed): the
    erasure of e-1, then a correction of e-1 the API accepted before the erasure was
    applied. Either batch split: the correction holds no payload, the chain verifies."""
    event = AuditEvent.model_validate(make_events(2, "e")[1])
    erasure = signed_control(chain.ERASED_ACTION, "e-01")
    fix = {**event.actor.model_dump(exclude_none=True)} if event.actor else {}
    correction = signed_control(
        chain.CORRECTED_ACTION,
        "e-01",
        metadata={"set": {"description": f"credited {SECRET}", "actor": fix}},
    )
    applier = ControlApplier(store, chain.control_keys(settings))
    now, prev = datetime.now(UTC), chain.GENESIS
    docs = []
    for seq, ev in enumerate((event, erasure, correction), start=1):
        doc = event_to_document(ev, now)
        prev = chain.seal(doc, seq, prev)
        docs.append(doc)
    batches = [docs] if same_batch else [docs[:2], docs[2:]]
    for batch in batches:
        await store.insert_many(batch)
        for doc in batch[1 if batch is batches[0] else 0 :]:
            stored_doc = await store.find_one({"_id": event_key("acme", doc["id"])})
            assert stored_doc is not None
            await applier.apply(stored_doc)
    kept = [d async for d in store.find({"tenant": "acme"})]
    assert [d["id"] for d in kept if SECRET in str(d)] == []
    late = await store.find_one({"_id": event_key("acme", correction.id)})
    assert late is not None and late["erased"]["event_id"] == erasure.id
    assert late["targets"] == [{"type": "audit_event", "id": "e-01"}]  # verify needs them
    report = await verify_tenant(store, "acme", [], None, control_keys=chain.control_keys(settings))
    assert (report.ok, report.reason, report.checked, report.erased) == (True, None, 3, 2), report


async def test_concurrent_retention_changes_each_get_a_version_and_the_last_one_wins(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """8 admins set the retention at once: each answer is its own change with its own
    version, the stored policy is the highest version's (never a mix), and the trail
    holds one ``retention.policy.changed`` per change, with its version."""
    admin = auth(scopes=ADMIN)
    wanted: list[int | None] = [1, 2, 3, None, 5, 6, 7, 8]

    async def put(days: int | None) -> tuple[int, dict[str, Any]]:
        r = await client.put("/v1/retention", json={"days": days}, headers=admin)
        return r.status_code, await r.get_json()

    answers = await asyncio.gather(*(put(days) for days in wanted))
    assert [status for status, _ in answers] == [200] * len(wanted), answers
    bodies = [body for _, body in answers]
    assert [b["days"] for b in bodies] == wanted  # each answer is its own change
    assert sorted(b["version"] for b in bodies) == list(range(1, len(wanted) + 1))
    assert all(b["audited"] is True and b["set_by"] == "tester" for b in bodies)
    last = max(bodies, key=lambda b: b["version"])
    shown = await (await client.get("/v1/retention", headers=admin)).get_json()
    assert {k: shown[k] for k in ("days", "version", "set_at")} == {
        k: last[k] for k in ("days", "version", "set_at")
    }
    records = await topic_records(settings)
    changes = [
        orjson.loads(value)["metadata"]
        for (topic, _, _), (_, value, *_) in records.items()
        if topic == settings.topic_events
        and orjson.loads(value).get("action") == "retention.policy.changed"
    ]
    assert sorted(changes, key=lambda c: c["version"]) == [
        {"days": b["days"], "version": b["version"]}
        for b in sorted(bodies, key=lambda b: b["version"])
    ]


# --- batch boundaries: the live processor cuts small batches, replay big ones --------

E, X, X2, C, C2 = "event", "erasure", "erasure2", "correction", "correction2"
LOG_ORDERS = [
    (E, X, C),  # the late correction (accepted before the erasure was applied)
    (E, C, X),
    (E, X, C, X2),
    (E, X, X2, C),
    (E, C, X, X2),
    (E, C, X, C2),
    (E, X, C, C2),
    (E, C, C2, X),
    (E, C, C2),  # no erasure: the corrections and their ``previous`` stay
]


def splits(n: int) -> list[list[int]]:
    """Every way to cut ``n`` records into consecutive batches (their sizes)."""
    if n == 0:
        return [[]]
    return [[k, *rest] for k in range(1, n + 1) for rest in splits(n - k)]


@pytest.mark.parametrize("order", LOG_ORDERS, ids=["-".join(o) for o in LOG_ORDERS])
async def test_the_stored_result_does_not_depend_on_where_batches_are_cut(
    order: tuple[str, ...], store: AsyncCollection[dict[str, Any]], settings: AuditSettings
) -> None:
    """The same records (as the API publishes them), fed to the processor's Steps 2, 5
    and 6 cut into batches every possible way: the stored documents are identical (the
    replay digest), so a replay's big batches rebuild what the live small ones stored."""
    keys = chain.control_keys(settings)
    event = AuditEvent.model_validate(make_events(1, "b")[0])
    fix = {"description": f"credited {SECRET}"}
    made = {
        E: event,
        X: signed_control(chain.ERASED_ACTION, "b-00", crud="d"),
        X2: signed_control(chain.ERASED_ACTION, "b-00", crud="d", description="again"),
        C: signed_control(chain.CORRECTED_ACTION, "b-00", crud="u", metadata={"set": fix}),
        C2: signed_control(
            chain.CORRECTED_ACTION, "b-00", crud="u", metadata={"set": {"description": "2"}}
        ),
    }
    base = int(datetime.now(UTC).timestamp() * 1000)
    records = [
        Record("events", 0, i, base + i, b"acme", encode_event(made[name]))
        for i, name in enumerate(order)
    ]
    digests: dict[tuple[int, ...], tuple[int, str]] = {}
    stores: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for n, sizes in enumerate(splits(len(records))):
        coll = store.database[f"batch_cut_{n}"]
        await coll.drop()
        await ensure_chain_index(coll)
        write, controls = Write(ChainWriter(coll)), ApplyControls(ControlApplier(coll, keys))
        at = 0
        for size in sizes:
            part = records[at : at + size]
            at += size
            batch = decode_batch(
                part, limits_from(settings), settings.max_event_bytes, ControlGate(keys)
            )
            assert batch.rejects == []
            await write(batch)
            await controls(batch)
        digests[tuple(sizes)] = await store_digest(coll)
        stores[tuple(sizes)] = [d async for d in coll.find({}).sort("_id", 1)]
        await coll.drop()
    one = (len(records),)  # one batch: what a replay does
    if X in order:  # the payload is gone, whatever the order
        assert [d["id"] for d in stores[one] if SECRET in str(d)] == []
    else:  # both corrections applied, each with what it replaced
        fixed = next(d for d in stores[one] if d["id"] == "b-00")
        assert [c["set"] for c in fixed["corrections"]] == [fix, {"description": "2"}]
        assert fixed["corrections"][1]["previous"] == fix
    differ = {
        sizes: [(a, b) for a, b in zip(stores[one], docs, strict=True) if a != b]
        for sizes, docs in stores.items()
        if digests[sizes] != digests[one]
    }
    assert differ == {}, differ
