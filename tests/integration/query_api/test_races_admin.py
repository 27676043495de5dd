"""Concurrent clients on the tenant-admin endpoints (``/v1/masking``, ``/v1/streams``),
the API in-process on the real SecantusDB, Tansu and redis-server.

N requests at once (``asyncio.gather``): no 500, every answer describes its own
change, the stored state is one a serial order of the same requests gives, and the
audit trail holds one event per accepted change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from quart.typing import TestClientProtocol as Client

from audit_events.masking import MASKING_COLLECTION
from audit_events.settings import AuditSettings
from tests.integration.stream_processor.test_archive import topic_records

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"


async def trail(settings: AuditSettings, action: str) -> list[dict[str, Any]]:
    """The metadata of every ``action`` event in the events topic."""
    records = await topic_records(settings)
    values = [
        orjson.loads(value)
        for (topic, _, _), (_, value, *_) in records.items()
        if topic == settings.topic_events
    ]
    return [v["metadata"] for v in values if v.get("action") == action]


async def test_concurrent_masking_changes_each_get_their_own_version_in_force_order(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """12 admins replace the rules at once: every answer is 200 with its own rules and
    version (1..12, no 409), the newest version is also the one in force last (its
    ``effective_at`` is the latest: the processor picks rules by ``effective_at``),
    and the trail holds one ``masking.rules.changed`` per version."""
    admin = auth(scopes=ADMIN)
    n = 12

    async def put(i: int) -> tuple[int, dict[str, Any]]:
        rules = [{"path": f"metadata.f{i}", "action": "redact"}]
        r = await client.put("/v1/masking", json={"rules": rules}, headers=admin)
        return r.status_code, await r.get_json()

    answers = await asyncio.gather(*(put(i) for i in range(n)))
    assert [status for status, _ in answers] == [200] * n, answers
    bodies = [body for _, body in answers]
    assert [b["rules"][0]["path"] for b in bodies] == [f"metadata.f{i}" for i in range(n)]
    assert sorted(b["version"] for b in bodies) == list(range(1, n + 1))
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    try:
        coll = mongo[settings.mongo_db][MASKING_COLLECTION]
        docs = await coll.find({"tenant": "acme"}).sort("version", 1).to_list(None)
    finally:
        await mongo.close()
    assert [d["version"] for d in docs] == list(range(1, n + 1))
    effective = [d["effective_at"] for d in docs]
    assert effective == sorted(effective), "a newer version takes effect before an older one"
    shown = await (await client.get("/v1/masking", headers=admin)).get_json()
    newest = max(bodies, key=lambda b: b["version"])
    assert (shown["version"], shown["rules"]) == (newest["version"], newest["rules"])
    changes = await trail(settings, "masking.rules.changed")
    assert sorted((c["version"], c["rules"][0]["path"]) for c in changes) == sorted(
        (b["version"], b["rules"][0]["path"]) for b in bodies
    )
