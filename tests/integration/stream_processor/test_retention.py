"""Per-tenant retention of the hot store (issue 16): purge only what the archive holds.

Real servers: the broker, MongoDB and Redis of tests/conftest.py, the archiver
in-process, the store filled by ``Replayer`` (the processor's own steps).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events.retention import PURGES_COLLECTION, set_policy
from audit_events.settings import AuditSettings
from audit_events.store_adapter import MONGODB, SECANTUSDB, chain_head
from audit_events.streams import STREAM_DEAD_LETTERS_COLLECTION, STREAMS_COLLECTION
from audit_events.topic_admin import ensure_topics
from query_api.verify import verify_tenant
from stream_processor.archive.archiver import Archiver
from stream_processor.archive.storage import DirectoryStorage
from stream_processor.replay import Replayer
from stream_processor.retention import purge_all, purge_tenant
from tests.helpers import eventually, run_cli

pytestmark = pytest.mark.integration
DAY = 86_400_000


@pytest.fixture
def settings(settings: AuditSettings, tmp_path: Path) -> AuditSettings:
    return settings.model_copy(
        update={
            "archive_dir": str(tmp_path / "archive"),
            "archive_segment_seconds": 0.3,
            "archive_segment_bytes": 4096,  # several segments
            "archiver_metrics_port": 0,
            "archiver_group": f"{settings.processor_group}-archiver",
        }
    )


PLAN = [("acme", 3, 0, 10), ("acme", 2, 0, 10), ("acme", 0, 0, 10), ("globex", 3, 0, 5)]


async def produce_days(
    settings: AuditSettings, now_ms: int, plan: list[tuple[str, int, int, int]] = PLAN
) -> dict[str, int]:
    """By default acme: 10 events received 3 days ago, 10 two days ago, 10 now
    (occurred_at alike); globex (no policy): 5 events 3 days ago. Returns id -> time."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    sent: dict[str, int] = {}
    try:
        for tenant, days_ago, first, n in plan:
            for i in range(first, first + n):
                ts = now_ms - days_ago * DAY + i * 1000
                event_id = f"{tenant}-d{days_ago}-{i:02d}"
                occurred = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat()
                value = {
                    "id": event_id,
                    "tenant": tenant,
                    "action": "doc.edit",
                    "occurred_at": occurred,
                    "targets": [{"type": "doc", "id": "d1"}],
                }
                await producer.send_and_wait(
                    settings.topic_events, orjson.dumps(value), key=tenant.encode(), timestamp_ms=ts
                )
                sent[event_id] = ts
    finally:
        await producer.stop()
    return sent


async def archive_all(settings: AuditSettings, want: int) -> None:
    archiver = Archiver(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))

    def caught_up() -> bool:
        assert not task.done(), task
        got = sum(e.count for e in archiver.manifest.entries if e.topic == settings.topic_events)
        return got >= want

    await eventually(caught_up, 60, what="the archiver did not catch up")
    stop.set()
    await task


async def seqs(store: AsyncCollection[dict[str, Any]], tenant: str) -> list[int]:
    return [d["seq"] async for d in store.find({"tenant": tenant}).sort("seq", 1)]


async def verified(store: AsyncCollection[dict[str, Any]], tenant: str) -> Any:
    return await verify_tenant(store, tenant, [], {})


async def test_purge_removes_exactly_the_older_archived_events_and_verify_stays_green(
    settings: AuditSettings,
    store: AsyncCollection[dict[str, Any]],
    client: Client,
    auth: Any,
) -> None:
    await ensure_topics(settings)
    now = datetime.now(UTC)
    await produce_days(settings, int(now.timestamp() * 1000))
    filled = await Replayer(settings, grace_seconds=0.2, archive=False).run()
    assert filled.swapped, filled
    assert await seqs(store, "acme") == list(range(1, 31))
    db = store.database
    storage = DirectoryStorage(settings.archive_path())
    admin = auth("acme", "events:read events:admin")

    # the API: default keep forever; bad input is a problem, never a 500
    got = await client.get("/v1/retention", headers=admin)
    assert got.status_code == 200 and (await got.get_json())["days"] is None
    for body, status in ((b"{", 400), (b"[]", 422), (b'{"days": 0}', 422), (b'{"x": 1}', 422)):
        bad = await client.put(
            "/v1/retention", data=body, headers={**admin, "Content-Type": "application/json"}
        )
        assert bad.status_code == status and bad.mimetype == "application/problem+json", body
    reader = auth("acme", "events:read")
    assert (await client.put("/v1/retention", json={"days": 1}, headers=reader)).status_code == 403
    put = await client.put("/v1/retention", json={"days": 1}, headers=admin)
    assert put.status_code == 200 and (await put.get_json())["days"] == 1

    # not archived yet: nothing is purged
    (result,) = await purge_all(db, storage, settings.topic_events, now=now)
    assert result.purged == 0 and result.candidates == 20, result
    assert "not archived" in (result.note or "") or "archive" in (result.note or "")
    assert await seqs(store, "acme") == list(range(1, 31))
    assert await db[PURGES_COLLECTION].count_documents({}) == 0

    # archived: exactly the 20 events received more than a day ago go, globex stays
    await archive_all(settings, 35)
    (result,) = await purge_all(db, storage, settings.topic_events, now=now)
    assert (result.purged, result.through_seq) == (20, 20), result
    assert result.segment and result.segment.startswith("segments/")
    assert await seqs(store, "acme") == list(range(21, 31))
    assert len(await seqs(store, "globex")) == 5
    again = await purge_tenant(db, storage, settings.topic_events, "acme", 1, now=now)
    assert again.purged == 0  # idempotent

    # verify: green, and it says what was purged (CLI/API share verify_tenant)
    report = await verified(store, "acme")
    assert report.ok and report.checked == 10, report
    assert report.purged and report.purged["through_seq"] == 20
    api = await client.get("/v1/verify", headers=reader)
    body = await api.get_json()
    assert api.status_code == 200 and body["ok"] and body["purged"]["through_seq"] == 20, body
    # a marker whose hash is not seq 20's: the first kept event does not link
    await db[PURGES_COLLECTION].update_one({"_id": "acme"}, {"$set": {"hash": "0" * 64}})
    assert not (await verified(store, "acme")).ok
    await db[PURGES_COLLECTION].update_one(
        {"_id": "acme"}, {"$set": {"hash": report.purged["hash"]}}
    )

    # a purged event: 410 naming its segment; a never-seen id: 404
    gone = await client.get("/v1/events/acme-d3-00", headers=reader)
    assert gone.status_code == 410 and gone.mimetype == "application/problem+json"
    problem = await gone.get_json()
    assert (
        problem["archived"]["segment"].startswith("segments/") and problem["archived"]["seq"] == 1
    )
    assert (await client.get("/v1/events/nope", headers=reader)).status_code == 404
    kept = await client.get("/v1/events/acme-d0-00", headers=reader)
    assert kept.status_code == 200
    history = await client.get("/v1/targets/doc/d1/history", headers=reader)
    assert history.status_code == 200
    assert history.headers["X-Retention-Horizon"].startswith("seq=20;")
    assert len((await history.get_json())["data"]) == 10
    export = await client.get("/v1/events/export?format=ndjson", headers=reader)
    assert export.headers["X-Retention-Horizon"].startswith("seq=20;")
    other = auth("globex", "events:read")
    export = await client.get("/v1/events/export?format=ndjson", headers=other)
    assert "X-Retention-Horizon" not in export.headers

    # a replay from the archive brings them back, and the chain still verifies
    back = await Replayer(settings, grace_seconds=0.2).run()
    assert back.swapped and back.ok, back
    # (and the events the API published meanwhile: the policy change, audited reads)
    assert (await seqs(store, "acme"))[:30] == list(range(1, 31))
    assert await store.count_documents({"tenant": "acme", "id": {"$regex": "^acme-d3-"}}) == 10
    assert (await verified(store, "acme")).ok
    # a restored event is served again right away, also one whose 410 the API cached
    # before the replay (the swap bumps every tenant's cache generations)
    assert (await client.get("/v1/events/acme-d3-00", headers=reader)).status_code == 200
    assert (await client.get("/v1/events/acme-d3-01", headers=reader)).status_code == 200
    again = await client.get("/v1/targets/doc/d1/history", headers=reader)  # cached before
    assert again.status_code == 200 and again.headers["X-Cache"] == "miss", again.headers


async def test_purge_stops_where_the_archive_ends(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]]
) -> None:
    """The archive holds acme's first 15 events only: of the 20 old ones, seq 1..15 go."""
    await ensure_topics(settings)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    await produce_days(settings, now_ms, [("acme", 3, 0, 10), ("acme", 2, 0, 5)])
    await archive_all(settings, 15)
    await produce_days(settings, now_ms, [("acme", 2, 5, 5), ("acme", 0, 0, 10)])
    filled = await Replayer(settings, grace_seconds=0.2, archive=False).run()
    assert filled.swapped
    db = store.database
    storage = DirectoryStorage(settings.archive_path())
    await set_policy(db, "acme", 1, by="test")
    (result,) = await purge_all(db, storage, settings.topic_events, now=now)
    assert (result.candidates, result.purged, result.through_seq) == (20, 15, 15), result
    assert result.note == "seq 16 and later are not archived yet"
    assert await seqs(store, "acme") == list(range(16, 31))
    report = await verified(store, "acme")
    assert report.ok and report.checked == 15, report
    # the head probe starts after the marker (seq 1 is gone), on every server kind
    for caps in (SECANTUSDB, MONGODB, None):
        head = await chain_head(store, "acme", {"seq": 1, "hash": 1}, caps)
        assert head is not None and head["seq"] == 30, (caps, head)
    # a policy of 3 days purges nothing more (seq 16.. are younger than 3 days)
    later = await purge_tenant(db, storage, settings.topic_events, "acme", 3, now=now)
    assert later.purged == 0


async def test_cli_retention_purge_and_verify(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]]
) -> None:
    """`auditstream retention set/show/clear`, `auditstream purge` (once), and
    `auditstream verify` naming the purge."""
    await ensure_topics(settings)
    await produce_days(settings, int(datetime.now(UTC).timestamp() * 1000))
    assert (await Replayer(settings, grace_seconds=0.2, archive=False).run()).swapped
    bad = run_cli(settings, "retention", "set", "acme", "--days", "0")
    assert bad.returncode == 2 and "--days" in bad.stderr, bad
    assert run_cli(settings, "retention", "set", "acme", "--days", "1").returncode == 0
    # nothing archived: nothing purged, exit 0 (a later run catches up)
    first = run_cli(settings, "purge")
    assert first.returncode == 0, first
    assert orjson.loads(first.stdout)["purged"] == 0
    await archive_all(settings, 35)
    done = run_cli(settings, "purge")
    assert done.returncode == 0, done
    line = orjson.loads(done.stdout)
    assert (line["tenant"], line["purged"], line["through_seq"]) == ("acme", 20, 20), line
    checked = run_cli(settings, "verify", "--tenant", "acme", "--quiet")
    assert checked.returncode == 0, checked
    assert "events up to seq 20 purged on" in checked.stdout, checked.stdout
    assert "archived in segment segments/" in checked.stdout
    shown = orjson.loads(run_cli(settings, "retention", "show", "acme").stdout)
    assert shown["purge"]["through_seq"] == 20 and shown["purge"]["purged"] == 20
    cleared = run_cli(settings, "retention", "clear", "acme")
    assert cleared.returncode == 0 and orjson.loads(cleared.stdout)["days"] is None


async def test_purge_never_deletes_what_a_log_stream_has_not_delivered(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]]
) -> None:
    """K stops at the lowest undelivered seq of any destination of the tenant: a paused
    one holds like an enabled one, a pending dead-letter batch holds until redriven, a
    deleted destination (and another tenant's) holds nothing."""
    await ensure_topics(settings)
    now = datetime.now(UTC)
    await produce_days(settings, int(now.timestamp() * 1000))
    assert (await Replayer(settings, grace_seconds=0.2, archive=False).run()).swapped
    await archive_all(settings, 35)
    db = store.database
    storage = DirectoryStorage(settings.archive_path())
    await set_policy(db, "acme", 1, by="test")
    streams, dead = db[STREAMS_COLLECTION], db[STREAM_DEAD_LETTERS_COLLECTION]
    base = {"kind": "webhook", "url": "https://example.com/hook", "batch_size": 100}
    await streams.insert_many(
        [
            {
                **base,
                "_id": "caught-up",
                "tenant": "acme",
                "name": "a",
                "enabled": True,
                "position": 25,
            },
            {
                **base,
                "_id": "paused",
                "tenant": "acme",
                "name": "p",
                "enabled": False,
                "position": 12,
            },
            {
                **base,
                "_id": "elsewhere",
                "tenant": "globex",
                "name": "g",
                "enabled": True,
                "position": 0,
            },
        ]
    )
    (result,) = await purge_all(db, storage, settings.topic_events, now=now)
    assert (result.purged, result.through_seq) == (12, 12), result
    assert "stream paused" in (result.note or "") and "seq 13" in (result.note or ""), result
    assert await seqs(store, "acme") == list(range(13, 31))

    # the paused destination is deleted; a dead-lettered batch from seq 16 awaits redrive
    await streams.delete_one({"_id": "paused"})
    await dead.insert_one(
        {"stream_id": "caught-up", "tenant": "acme", "first_seq": 16, "last_seq": 18, "count": 3}
    )
    result = await purge_tenant(db, storage, settings.topic_events, "acme", 1, now=now)
    assert (result.purged, result.through_seq) == (3, 15), result
    assert "dead-letter" in (result.note or "") and "seq 16" in (result.note or ""), result

    # redriven (the batch left the list): the rest of the old events go
    await dead.delete_many({})
    result = await purge_tenant(db, storage, settings.topic_events, "acme", 1, now=now)
    assert (result.purged, result.through_seq, result.note) == (5, 20, None), result
    assert (await verified(store, "acme")).ok


async def test_concurrent_first_changes_each_answer_their_own_version(
    store: AsyncCollection[dict[str, Any]],
) -> None:
    """Eight changes at once to a tenant with no policy yet, for 12 tenants: every
    change answers what it saved (its days, its own version), never an empty answer.
    On SecantusDB a losing first upsert matched the winner's new document and answered
    ``value: null`` (one CI run: two PUTs answered ``days: null, version: 0``)."""
    db = store.database
    wanted = [1, 2, 3, None, 5, 6, 7, 8]
    for n in range(12):
        tenant = f"race-{n}"
        saved = await asyncio.gather(
            *(set_policy(db, tenant, days, by=f"admin-{i}") for i, days in enumerate(wanted))
        )
        assert [s.get("days") for s in saved] == wanted, (tenant, saved)
        assert [s.get("set_by") for s in saved] == [f"admin-{i}" for i in range(8)]
        assert sorted(int(s["version"]) for s in saved) == list(range(1, 9)), saved
