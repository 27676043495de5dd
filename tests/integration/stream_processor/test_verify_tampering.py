"""Verify sees what it can see (issue 14 item 7), on real servers.

Tampering that ``/v1/verify`` and ``auditstream verify`` missed: a hand-made
erasure written directly in MongoDB, deleting a tenant's newest event, editing
``received_at``, rewriting and re-hashing recent events no checkpoint covered
yet. Each is applied to the live store, verified through the API (and the CLI
once), then undone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION
from auditstream.embedded import free_port
from tests.conftest import ProcessorProcess
from tests.helpers import by_seq, eventually, run_cli, scrape

pytestmark = pytest.mark.integration
PRIVATE, PUBLIC = chain.generate_keypair()
ADMIN = "events:read events:write events:admin"
IDLE_SECONDS = 4.0


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    """Checkpoint by time only: batches closer together than IDLE_SECONDS are not signed."""
    return settings.model_copy(
        update={
            "checkpoint_public_key": PUBLIC,
            "checkpoint_every_events": 1000,
            "checkpoint_every_seconds": IDLE_SECONDS,
        }
    )


def events(prefix: str, n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i:03d}",
            "tenant": "acme",
            "action": "invoice.update",
            "actor": {"id": "alice"},
            "targets": [{"type": "invoice", "id": str(i)}],
            "description": f"invoice {prefix}{i}",
            "metadata": {"amount": i},
        }
        for i in range(n)
    ]


async def count_is(store: AsyncCollection[dict[str, Any]], n: int) -> None:
    async def check() -> bool:
        return await store.count_documents({"tenant": "acme"}) == n

    await eventually(check, timeout=90)


async def test_verify_catches_what_it_missed(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    port = free_port()
    processors(
        AUDITSTREAM_CHECKPOINT_SIGNING_KEY=PRIVATE, AUDITSTREAM_PROCESSOR_METRICS_PORT=str(port)
    )
    checkpoints = store.database[CHECKPOINTS_COLLECTION]
    resp = await client.post("/v1/events", json={"events": events("a", 10)}, headers=auth())
    assert resp.status_code == 202
    await count_is(store, 10)  # the first batch is checkpointed at once (seq 10)

    async def signed() -> bool:  # the checkpoint-age alert's metrics (deploy/prometheus)
        metrics = await asyncio.to_thread(scrape, port)
        return metrics.get("auditstream_checkpoint_last_success_timestamp_seconds", 0) > 0

    await eventually(signed, timeout=30)
    assert "auditstream_checkpoint_pending_age_seconds" in await asyncio.to_thread(scrape, port)
    erase = await client.delete(
        "/v1/events/a-000?wait=true&reason=gdpr", headers=auth(scopes=ADMIN)
    )
    assert erase.status_code == 204  # seq 11: an authentic erasure
    resp = await client.post("/v1/events", json={"events": events("b", 5)}, headers=auth())
    assert resp.status_code == 202
    await count_is(store, 16)

    # (a) the head stays idle; the timer checkpoints it (before: only a next batch did)
    async def head_signed() -> bool:
        return await checkpoints.find_one({"tenant": "acme", "seq": 16}) is not None

    await eventually(head_signed, timeout=4 * IDLE_SECONDS)

    async def verdict() -> dict[str, Any]:
        resp = await client.get("/v1/verify", headers=auth())
        assert resp.status_code == 200
        body: dict[str, Any] = await resp.get_json()
        print("verify →", {k: body.get(k) for k in ("ok", "first_bad_seq", "first_bad_id")})
        print("        ", body.get("reason"), body.get("detail"))
        return body

    clean = await verdict()
    assert (clean["ok"], clean["checked"], clean["erased"], clean["unsigned_tail"]) == (
        True,
        16,
        1,
        0,
    )
    results: dict[str, tuple[bool, int | None, str | None, str | None]] = {}

    def result(body: dict[str, Any]) -> tuple[bool, int | None, str | None, str | None]:
        return body["ok"], body["first_bad_seq"], body.get("first_bad_id"), body["reason"]

    # a hand-made erasure: payload removed, `erased` set, no control event behind it
    original = await by_seq(store, 4)
    fake = {"event_id": "nothing", "by": "mallory", "at": original["received_at"], "reason": "x"}
    unset = {f: "" for f in chain.ERASED_FIELDS}
    await store.update_one({"_id": original["_id"]}, {"$unset": unset, "$set": {"erased": fake}})
    results["hand-made erasure"] = result(await verdict())
    cli = run_cli(
        settings, "verify", "--tenant", "acme", "--quiet", AUDITSTREAM_CHECKPOINT_PUBLIC_KEY=PUBLIC
    )
    assert cli.returncode == 1 and "a-003" in cli.stdout, cli.stdout + cli.stderr
    # ... or one that points at the authentic erasure of another event
    real = (await by_seq(store, 1))["erased"]
    await store.update_one({"_id": original["_id"]}, {"$set": {"erased": real}})
    results["erasure borrowed from another event"] = result(await verdict())
    await store.replace_one({"_id": original["_id"]}, original)

    # received_at edited (the event itself untouched)
    original = await by_seq(store, 6)
    later = original["received_at"] + timedelta(hours=1)
    await store.update_one({"_id": original["_id"]}, {"$set": {"received_at": later}})
    results["received_at edited"] = result(await verdict())
    await store.replace_one({"_id": original["_id"]}, original)

    # the newest event deleted
    newest = await by_seq(store, 16)
    await store.delete_one({"_id": newest["_id"]})
    results["newest deleted"] = result(await verdict())
    await store.insert_one(newest)

    # the recent tail rewritten and re-hashed consistently (seq 13..16)
    saved = [await by_seq(store, s) for s in range(13, 17)]
    prev = (await by_seq(store, 12))["hash"]
    for doc in saved:
        forged = {**doc, "description": "nothing to see"} if doc["seq"] == 13 else dict(doc)
        prev = chain.seal(forged, doc["seq"], prev)
        await store.replace_one({"_id": doc["_id"]}, forged)
    results["recent tail rewritten"] = result(await verdict())
    for doc in saved:
        await store.replace_one({"_id": doc["_id"]}, doc)

    assert results == {
        "hand-made erasure": (False, 4, "a-003", "bad_erasure"),
        "erasure borrowed from another event": (False, 4, "a-003", "bad_erasure"),
        "received_at edited": (False, 6, "a-005", "edited"),
        "newest deleted": (False, 16, None, "truncated"),
        "recent tail rewritten": (False, 16, "b-004", "rewritten"),
    }
    assert (await verdict())["ok"] is True  # everything undone
    # ...and every bad answer counted for the verify-failure alert (deploy/prometheus/alerts.yml).
    metrics = await (await client.get("/metrics")).get_data(as_text=True)
    for reason in ("bad_erasure", "edited", "truncated", "rewritten"):
        found = re.search(rf'auditstream_verify_failures_total{{reason="{reason}"}} (\S+)', metrics)
        assert found and float(found.group(1)) >= 1, reason

    # every event of the tenant deleted: the CLI still finds it by its checkpoints
    await store.delete_many({"tenant": "acme"})
    cli = run_cli(settings, "verify", "--quiet", AUDITSTREAM_CHECKPOINT_PUBLIC_KEY=PUBLIC)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "BAD acme: first bad seq 1: truncated" in cli.stdout, cli.stdout


async def test_a_head_left_unsigned_by_a_dead_worker_is_signed_by_its_successor(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    slow = {"AUDITSTREAM_CHECKPOINT_SIGNING_KEY": PRIVATE}
    first = processors(**slow, AUDITSTREAM_CHECKPOINT_EVERY_SECONDS="600")
    checkpoints = store.database[CHECKPOINTS_COLLECTION]
    for prefix, n in (("a", 10), ("b", 5)):  # 10 signed at once, 5 not (600 s)
        resp = await client.post("/v1/events", json={"events": events(prefix, n)}, headers=auth())
        assert resp.status_code == 202
        await count_is(store, 10 if prefix == "a" else 15)
    await asyncio.sleep(3)  # the batch's offsets are committed: nothing to redeliver
    first.kill()
    assert await checkpoints.find_one({"tenant": "acme", "seq": 15}) is None
    processors(**slow, AUDITSTREAM_CHECKPOINT_EVERY_SECONDS="1")

    async def head_signed() -> bool:
        return await checkpoints.find_one({"tenant": "acme", "seq": 15}) is not None

    await eventually(head_signed, timeout=45)  # before: only the tenant's next event did
