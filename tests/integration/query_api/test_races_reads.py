"""Readers racing writers: what a client reads right after a ``?wait=true`` answer.

The processor stores a batch (MongoDB), applies its control events, publishes its
checkpoint and only then bumps the cache generations (stream_processor/pipeline.py,
steps 4-9). A ``?wait=true`` request that looks at the store inside that gap (its
fallback look, or a wake-up by an earlier batch's announcement while the next
batch is being written) used to answer 201/200/204 while every page cached before
the write was still served: the client's next read missed its own event, or showed
an erased payload. These tests hold the processor's bump back (they write the
store as the processor does and bump later) to make that gap certain.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from audit_events.codec import content_hash, event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import CHAIN_INDEX, event_key
from query_api import listing
from tests.helpers import (
    T0,
    LiveApi,
    Store,
    bearer,
    eventually,
    make_event,
    serve_api,
)

pytestmark = pytest.mark.integration


def _ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [e["id"] for e in resp.json()["data"]]


async def _store_without_bump(db: Store, n: int) -> None:
    """Step 4 of the processor only: the event is in MongoDB, its generations not bumped."""
    event = make_event(n)
    doc = {**event_to_document(event, datetime.now(UTC)), "content_hash": content_hash(event)}
    await db.events.insert_one(doc)


async def test_a_201_of_wait_true_is_seen_by_the_next_reads_before_the_processors_bump(
    http: httpx.AsyncClient,
    db: Store,
    settings: AuditSettings,
    live: LiveApi,
    request: pytest.FixtureRequest,
) -> None:
    auth = bearer(settings)
    live.services.waits.fallback_seconds = 0.05  # type: ignore[union-attr]
    await db.put([make_event(1)])
    reads = [
        "/v1/events",
        "/v1/events?action=invoice.create",
        "/v1/events/acme-000004",
        "/v1/targets/invoice/4/history",
    ]
    other = serve_api(settings)
    request.addfinalizer(other.stop)
    for url in [*reads, *(other.url + r for r in reads)]:
        # cached before the write, on both processes: a list, a filter, a 404, a history
        await http.get(url, headers=auth)
        again = await http.get(url, headers=auth)
        assert again.headers.get("X-Cache", "hit") == "hit"  # a 404 says nothing
    post = asyncio.create_task(
        http.post("/v1/events?wait=true", json=make_event(4).model_dump(mode="json"), headers=auth)
    )
    await _store_without_bump(db, 4)
    answer = await post
    assert answer.status_code == 201, answer.text
    for base in ("", other.url):  # this API process, and another one on the same Redis
        assert _ids(await http.get(base + reads[0], headers=auth)) == ["acme-000004", "acme-000001"]
        assert _ids(await http.get(base + reads[1], headers=auth)) == ["acme-000004", "acme-000001"]
        assert (await http.get(base + reads[2], headers=auth)).status_code == 200
        assert _ids(await http.get(base + reads[3], headers=auth)) == ["acme-000004"]


async def test_an_erasure_answered_204_is_never_read_with_its_payload(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings, live: LiveApi
) -> None:
    auth = bearer(settings)
    admin = bearer(settings, scopes="events:read events:admin")
    live.services.waits.fallback_seconds = 0.05  # type: ignore[union-attr]
    await db.put([make_event(1)])
    for _ in range(2):
        one = await http.get("/v1/events/acme-000001", headers=auth)
        history = await http.get("/v1/targets/invoice/1/history", headers=auth)
    assert (one.headers["X-Cache"], one.json()["description"]) == ("hit", "event number 1")
    assert (history.headers["X-Cache"], _ids(history)) == ("hit", ["acme-000001"])
    erase = asyncio.create_task(
        http.delete("/v1/events/acme-000001?wait=true&reason=gdpr", headers=admin)
    )
    waits = live.services.waits
    assert waits is not None

    async def waiting() -> bool:  # read, published, and waiting: the processor may apply it
        return "acme" in waits._waiters  # the API's own loop (another thread) registers it

    await eventually(waiting, 30, 0.01, what="the DELETE waits for its erasure")
    erased: dict[str, Any] = {"at": datetime.now(UTC), "by": "admin", "reason": "gdpr"}
    await db.events.update_one(
        {"_id": event_key("acme", "acme-000001")},
        {"$set": {"erased": erased}, "$unset": {"description": "", "targets": ""}},
    )
    assert (await erase).status_code == 204
    after = await http.get("/v1/events/acme-000001", headers=auth)
    assert after.status_code == 410, after.text
    page = await http.get("/v1/events", headers=auth)
    assert _ids(page) == []
    assert _ids(await http.get("/v1/targets/invoice/1/history", headers=auth)) == []


async def test_concurrent_readers_of_two_tenants_never_share_a_cached_answer(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings, live: LiveApi
) -> None:
    """Same filter, same page, same event id in two tenants, read at once (cold, so
    the loads race), by single-tenant tokens and by one token for both (?tenant=)."""
    await db.put(
        [make_event(n, tenant=t, id=f"e-{n}") for t in ("acme", "globex") for n in range(3)]
    )
    await db.put([make_event(9, tenant="acme", id="e-9", description="acme only")])
    both = bearer(settings, ["acme", "globex"])
    reads = []
    for tenant in ("acme", "globex"):
        for auth, extra in ((bearer(settings, tenant), ""), (both, f"tenant={tenant}&")):
            for path in ("/v1/events?{}limit=2", "/v1/events/e-1?{}", "/v1/events/e-9?{}"):
                reads.append((tenant, path, path.format(extra), auth))
    answers = await asyncio.gather(
        *(http.get(url, headers=auth) for _, _, url, auth in reads for _ in range(4))
    )
    assert len(answers) == 4 * len(reads) == 48
    for i, answer in enumerate(answers):
        tenant, path, _, _ = reads[i // 4]
        if "e-9" in path:
            assert answer.status_code == (200 if tenant == "acme" else 404), (tenant, path)
            continue
        body = answer.json()
        docs = body["data"] if "limit" in path else [body]
        assert {d["tenant"] for d in docs} == {tenant}, (tenant, path)


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_an_export_streamed_during_ingestion_has_each_event_once(
    http: httpx.AsyncClient,
    db: Store,
    settings: AuditSettings,
    live: LiveApi,
    monkeypatch: pytest.MonkeyPatch,
    order: str,
) -> None:
    """NDJSON export in windows cut along the chain (SecantusDB's path; on MongoDB one
    range) while events keep arriving at times inside the exported range: valid lines,
    no event twice, every event stored before the export began in it."""
    monkeypatch.setattr(listing, "WINDOW_EVENTS", 40)  # ~40 events a window: 10 windows
    events = [make_event(n, occurred_at=T0 + timedelta(seconds=n // 2)) for n in range(400)]
    docs = [
        {**event_to_document(e, datetime.now(UTC)), "content_hash": content_hash(e), "seq": i + 1}
        for i, e in enumerate(events)
    ]
    await db.events.create_index(CHAIN_INDEX[1], name=CHAIN_INDEX[0])
    await db.events.insert_many(docs)
    before = {e.id for e in events}
    stop = asyncio.Event()

    async def arrive() -> int:
        rng, n = random.Random(11), 0
        while not stop.is_set():
            when = T0 + timedelta(seconds=rng.randrange(200), milliseconds=rng.choice([0, 500]))
            await db.put([make_event(1000 + n, id=f"new-{n:04d}", occurred_at=when)])
            n += 1
            await asyncio.sleep(0.02)  # 50 events/s
        return n

    writer = asyncio.create_task(arrive())
    lines = []
    async with http.stream(
        "GET", f"/v1/events/export?format=ndjson&order={order}", headers=bearer(settings)
    ) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line:
                lines.append(json.loads(line))
            await asyncio.sleep(0.0005)  # a slow client: writes land mid-export
    stop.set()
    arrived = await writer
    ids = [d["id"] for d in lines]
    assert len(ids) == len(set(ids)), "an event exported twice"
    assert before <= set(ids)
    keys = [(datetime.fromisoformat(d["occurred_at"]), d["id"]) for d in lines]
    assert keys == sorted(keys, reverse=order == "desc")
    assert arrived > 0
