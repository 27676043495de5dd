"""Masking before storage (issue 17), with the real processor, MongoDB, API and a webhook.

The originals of masked fields never reach MongoDB (any collection), the export or
a stream delivery; equal values hash equally; the chain still verifies; events
stored before the rule keep what they were stored with.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events.masking import MARKER, hash_value, tenant_key
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from stream_processor.archive.archiver import Archiver
from stream_processor.replay import Replayer, store_digest
from stream_processor.streams.worker import Streamer
from tests.conftest import ProcessorProcess
from tests.helpers import eventually, run_cli
from tests.stream_receivers import Receiver, self_signed

pytestmark = pytest.mark.integration

ADMIN = "events:read events:write events:admin"
SECRET = "masking-secret-0123456789abcdef"
HOOK_SECRET = "whsec-masking-0123456789"
EMAIL, OTHER, EARLY = "ann.original@example.com", "bob.original@example.com", "early@example.com"
NAME, PHONE, IP = "Annabel Originalname", "+44 20 7946 0958", "198.51.100.77"
RULES = [
    {"path": "metadata.user.email", "action": "hash"},
    {"path": "actor.name", "action": "redact"},
    {"path": "changes.phone", "action": "redact"},
    {"path": "context.ip", "action": "truncate_ip"},
]


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def settings(settings: AuditSettings, tls: tuple[Path, Path]) -> AuditSettings:
    """The test's settings (conftest) with masking on and quick; the API, the processor
    and the stream worker all use these."""
    return settings.model_copy(
        update={
            "masking_secret": SecretStr(SECRET),
            "masking_delay_seconds": 1.0,
            "masking_cache_seconds": 0.3,
            "streams_ca_file": str(tls[0]),
            "streams_allow_private_hosts": True,
            "streams_poll_seconds": 0.05,
            "streamer_metrics_port": 0,
        }
    )


@pytest.fixture
def receiver(tls: tuple[Path, Path]) -> Iterator[Receiver]:
    r = Receiver(tls[0], tls[1], secrets=[HOOK_SECRET]).start()
    yield r
    r.stop()


@pytest.fixture
async def streamer(settings: AuditSettings) -> AsyncIterator[Callable[[], None]]:
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    def start() -> None:
        stop = asyncio.Event()
        tasks.append((asyncio.create_task(Streamer(settings).run(stop)), stop))

    yield start
    for task, stop in tasks:
        stop.set()
        await asyncio.wait_for(task, 10)


def ev(n: int, email: str, name: str = NAME, phone: str = PHONE, ip: str = IP) -> dict[str, Any]:
    return {
        "id": f"m-{n}",
        "tenant": "acme",
        "action": "user.update",
        "actor": {"id": "u-7", "type": "user", "name": name},
        "context": {"ip": ip},
        "metadata": {"user": {"email": email}, "plan": "pro"},
        "changes": {"phone": {"old": phone, "new": None}},
    }


def _archived_lines(root: Path) -> bytes:
    return b"".join(gzip.decompress(p.read_bytes()) for p in root.rglob("*.gz"))


async def _mongo_dump(settings: AuditSettings) -> bytes:
    """Every document of every collection of the test's database, as JSON bytes."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    try:
        db = client[settings.mongo_db]
        out = []
        for name in await db.list_collection_names():
            out += await db[name].find({}).to_list(None)
        return orjson.dumps(out, default=str)
    finally:
        await client.close()


async def test_masked_before_storage_export_stream_and_verify(
    client: Client,
    auth: Callable[..., dict[str, str]],
    settings: AuditSettings,
    processors: Callable[..., ProcessorProcess],
    receiver: Receiver,
    streamer: Callable[[], None],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    admin = auth("acme", ADMIN)
    processors()
    archiver = Archiver(settings)  # archives the events topic as it goes
    stop_archiver = asyncio.Event()
    archiving = asyncio.create_task(archiver.run(stop_archiver))
    before = await client.post(
        "/v1/events?wait=true",
        json=ev(0, EARLY, "Early Bird", "+1 555 0100", "192.0.2.1"),
        headers=admin,
    )
    assert before.status_code in (201, 202), await before.get_data(as_text=True)

    # bad requests are problems, never 500
    bad = await client.put(
        "/v1/masking", data=b"{nope", headers={**admin, "Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.headers["Content-Type"] == "application/problem+json"
    wrong = await client.put(
        "/v1/masking", json={"rules": [{"path": "payload.x", "action": "encrypt"}]}, headers=admin
    )
    assert wrong.status_code == 422 and wrong.headers["Content-Type"] == "application/problem+json"
    assert len((await wrong.get_json())["errors"]) == 2
    reader = await client.put("/v1/masking", json={"rules": RULES}, headers=auth("acme"))
    assert reader.status_code == 403

    put = await client.put("/v1/masking", json={"rules": RULES}, headers=admin)
    assert put.status_code == 200, await put.get_data(as_text=True)
    saved = await put.get_json()
    assert saved["version"] == 1 and saved["rules"] == RULES and saved["audited"] is True
    shown = await (await client.get("/v1/masking", headers=admin)).get_json()
    assert shown["rules"] == RULES and shown["set_by"] == "tester"
    effective = datetime.fromisoformat(saved["effective_at"].replace("Z", "+00:00"))
    await asyncio.sleep(max(0.0, (effective - datetime.now(UTC)).total_seconds()) + 0.2)

    stream = await client.post(
        "/v1/streams",
        json={
            "kind": "webhook",
            "name": "siem",
            "url": receiver.url,
            "secret": HOOK_SECRET,
            "start": "beginning",
        },
        headers=admin,
    )
    assert stream.status_code == 201, await stream.get_data(as_text=True)
    streamer()

    batch = [ev(1, EMAIL), ev(2, EMAIL), ev(3, OTHER)]
    resp = await client.post("/v1/events?wait=true", json={"events": batch}, headers=admin)
    assert resp.status_code in (201, 202), await resp.get_data(as_text=True)

    def delivered() -> list[dict[str, Any]] | None:
        got = receiver.events()
        return got if {"m-1", "m-2", "m-3"} <= {e["id"] for e in got} else None

    await eventually(delivered, 60, what="the masked events delivered to the webhook")

    # MongoDB: no original anywhere (events, the rules' history, stream state ...)
    dump = await _mongo_dump(settings)
    for original in (EMAIL, OTHER, PHONE, IP, "Originalname"):
        assert original.encode() not in dump, original
    client_db: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    try:
        events = client_db[settings.mongo_db][EVENTS_COLLECTION]
        docs = {
            d["id"]: d async for d in events.find({"id": {"$in": ["m-0", "m-1", "m-2", "m-3"]}})
        }
    finally:
        await client_db.close()
    key = tenant_key(SECRET, "acme")
    assert docs["m-1"]["metadata"]["user"]["email"] == hash_value(key, EMAIL)  # the SDK's too
    assert docs["m-1"]["metadata"]["user"]["email"] == docs["m-2"]["metadata"]["user"]["email"]
    assert docs["m-3"]["metadata"]["user"]["email"] == hash_value(key, OTHER)
    assert docs["m-1"]["metadata"]["plan"] == "pro"
    assert docs["m-1"]["actor"] == {"id": "u-7", "type": "user", "name": MARKER}
    assert docs["m-1"]["changes"]["phone"] == {"old": MARKER}
    assert docs["m-1"]["context"]["ip"] == "198.51.100.0"
    assert "originalname" not in docs["m-1"]["search"]
    # stored before the rule took effect: not rewritten
    assert docs["m-0"]["metadata"]["user"]["email"] == EARLY
    assert docs["m-0"]["actor"]["name"] == "Early Bird"

    # the export and the stream carry the masked values only
    export = await client.get("/v1/events/export?format=ndjson", headers=admin)
    assert export.status_code == 200
    body = await export.get_data()
    delivered_bytes = b"".join(r[1] for r in receiver.requests)
    for original in (EMAIL, OTHER, PHONE, IP, "Originalname"):
        assert original.encode() not in body and original.encode() not in delivered_bytes
    assert hash_value(key, EMAIL).encode() in body and hash_value(key, EMAIL).encode() in (
        delivered_bytes
    )

    # the archive's copy: masked too (the archiver takes what the topic holds at stop)
    stop_archiver.set()
    await asyncio.wait_for(archiving, 60)
    archived = await asyncio.to_thread(_archived_lines, Path(settings.archive_path()))
    events_archived = {
        e["id"]: e
        for line in archived.splitlines()
        if isinstance(v := orjson.loads(line)["v"], str) and (e := orjson.loads(v)).get("id")
    }
    assert events_archived["m-1"]["metadata"]["user"]["email"] == hash_value(key, EMAIL)
    assert events_archived["m-0"]["metadata"]["user"]["email"] == EARLY  # before the rule
    for original in (EMAIL, OTHER, PHONE, IP, "Originalname"):
        assert original.encode() not in archived, original

    # the chain verifies: the content hashes are of the masked events
    report = await (await client.get("/v1/verify", headers=admin)).get_json()
    assert report["ok"] is True, report
    # a replay from the topic (the originals) masks each event as the live run did
    digest = await store_digest(store)
    replayed = await Replayer(settings, grace_seconds=1.0).run()
    assert replayed.swapped and replayed.ok, replayed
    assert await store_digest(store) == digest
    # the change itself is an audit event of the tenant
    changed = await client.get("/v1/events?action=masking.rules.changed", headers=admin)
    [audit] = (await changed.get_json())["data"]
    assert audit["actor"]["id"] == "tester" and audit["metadata"]["rules"] == RULES


def test_masking_cli_set_show_clear_and_key(settings: AuditSettings) -> None:
    out = run_cli(
        settings, "masking", "set", "acme", "metadata.email=hash", "context.ip=truncate_ip"
    )
    assert out.returncode == 0, out.stderr
    shown = orjson.loads(run_cli(settings, "masking", "show", "acme").stdout)
    assert shown["version"] == 1 and shown["rules"] == [
        {"path": "metadata.email", "action": "hash"},
        {"path": "context.ip", "action": "truncate_ip"},
    ]
    bad = run_cli(settings, "masking", "set", "acme", "payload.x=hash")
    assert bad.returncode != 0 and "must start with" in bad.stderr
    nobody = run_cli(settings, "masking", "clear", "no tenant!")
    assert nobody.returncode != 0 and "not a tenant name" in nobody.stderr
    cleared = run_cli(settings, "masking", "clear", "acme")
    assert cleared.returncode == 0 and orjson.loads(cleared.stdout)["rules"] == []
    key = run_cli(settings, "masking", "key", "acme")
    assert key.stdout.strip() == tenant_key(SECRET, "acme").hex()


async def test_wait_true_confirms_a_masked_event_and_still_spots_a_conflict(
    client: Client,
    auth: Callable[..., dict[str, str]],
    settings: AuditSettings,
    processors: Callable[..., ProcessorProcess],
) -> None:
    """`POST ?wait=true` compares what it sent with what was stored; masking changes
    the stored content, so the comparison leaves the masked paths out: 201 for the
    masked event (not a 5 s wait and 202), 202 for an id reused with other content."""
    admin = auth("acme", ADMIN)
    processors()

    async def worker_stores() -> bool:  # the worker has joined and stores (unmasked tenant)
        probe = {**ev(0, EMAIL), "tenant": "globex", "id": f"probe-{time.monotonic_ns()}"}
        resp = await client.post("/v1/events?wait=true", json=probe, headers=auth("globex"))
        return resp.status_code == 201

    await eventually(worker_stores, 90, what="the worker storing events")
    put = await client.put("/v1/masking", json={"rules": RULES}, headers=admin)
    assert put.status_code == 200, await put.get_data(as_text=True)
    effective = datetime.fromisoformat(
        (await put.get_json())["effective_at"].replace("Z", "+00:00")
    )
    await asyncio.sleep(max(0.0, (effective - datetime.now(UTC)).total_seconds()) + 0.5)

    sent = {**ev(10, EMAIL), "occurred_at": "2026-11-30T10:00:00Z"}
    stored = await client.post("/v1/events?wait=true", json=sent, headers=admin)
    assert stored.status_code == 201, await stored.get_data(as_text=True)
    again = await client.post("/v1/events?wait=true", json=sent, headers=admin)
    assert again.status_code == 201, await again.get_data(as_text=True)  # a redelivery
    other = {**sent, "action": "user.delete"}  # same id, other content
    conflict = await client.post("/v1/events?wait=true", json=other, headers=admin)
    assert conflict.status_code == 202, await conflict.get_data(as_text=True)
