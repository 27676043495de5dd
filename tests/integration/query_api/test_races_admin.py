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

import httpx
import orjson
import pytest
from pymongo import AsyncMongoClient
from quart.typing import TestClientProtocol as Client

from audit_events.masking import MASKING_COLLECTION
from audit_events.settings import AuditSettings
from audit_events.stream_secrets import StreamSecrets
from audit_events.streams import MAX_STREAMS_PER_TENANT, STREAMS_COLLECTION
from tests.helpers import LiveApi, bearer
from tests.integration.stream_processor.test_archive import topic_records

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"
HOOK = "https://127.0.0.1:9/hook"  # never called: no stream worker runs here


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    return settings.model_copy(update={"streams_allow_private_hosts": True})


async def stored_streams(settings: AuditSettings) -> list[dict[str, Any]]:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    try:
        coll = mongo[settings.mongo_db][STREAMS_COLLECTION]
        return await coll.find({"tenant": "acme"}).to_list(None)
    finally:
        await mongo.close()


async def new_stream(client: Client, admin: dict[str, str], name: str = "siem") -> str:
    body = {"kind": "webhook", "name": name, "url": HOOK, "secret": "whsec-0-0123456789"}
    r = await client.post("/v1/streams", json=body, headers=admin)
    assert r.status_code == 201, await r.get_data(as_text=True)
    stream_id: str = (await r.get_json())["id"]
    return stream_id


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


async def test_concurrent_stream_changes_each_answer_their_own_and_rotate_in_a_chain(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """8 admins rename the destination and rotate its secret at once: each answer shows
    its own name, and the stored secrets are a serial order's: the newest secret's
    ``previous_secret`` is another of the 8 (the one before it), never the original
    that every request read."""
    admin = auth(scopes=ADMIN)
    sid = await new_stream(client, admin)
    n = 8

    async def put(i: int) -> tuple[int, dict[str, Any]]:
        body = {"name": f"name-{i}", "secret": f"whsec-{i + 1}-0123456789"}
        r = await client.put(f"/v1/streams/{sid}", json=body, headers=admin)
        return r.status_code, await r.get_json()

    answers = await asyncio.gather(*(put(i) for i in range(n)))
    assert [status for status, _ in answers] == [200] * n, answers
    assert [body["name"] for _, body in answers] == [f"name-{i}" for i in range(n)]
    [doc] = await stored_streams(settings)
    box = StreamSecrets.from_settings(settings)
    secret, previous = box.open(doc["secret"]), box.open(doc["previous_secret"])
    assert doc["name"] == f"name-{int(str(secret).split('-')[1]) - 1}"  # one PUT's whole change
    mine = {f"whsec-{i + 1}-0123456789" for i in range(n)}
    assert secret in mine and previous in mine - {secret}, (secret, previous)


async def test_concurrent_deletes_of_one_stream_delete_it_once(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """8 DELETEs of one destination at once, and 8 PUTs beside them: one DELETE answers
    204, the others 404 (as they would one after another); no PUT answers 500, and
    the destination is gone."""
    admin = auth(scopes=ADMIN)
    sid = await new_stream(client, admin)
    deletes = [client.delete(f"/v1/streams/{sid}", headers=admin) for _ in range(8)]
    puts = [
        client.put(f"/v1/streams/{sid}", json={"name": f"n{i}"}, headers=admin) for i in range(8)
    ]
    answers = await asyncio.gather(*deletes, *puts)
    gone = sorted(r.status_code for r in answers[:8])
    assert gone == [204] + [404] * 7, gone
    assert {r.status_code for r in answers[8:]} <= {200, 404}, [r.status_code for r in answers]
    assert await stored_streams(settings) == []
    after = await client.get(f"/v1/streams/{sid}", headers=admin)
    assert after.status_code == 404


async def test_concurrent_creates_keep_the_per_tenant_limit(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """More creates at once than a tenant may have: as many 201 as destinations stored,
    never more than the limit, the rest 422."""
    admin = auth(scopes=ADMIN)
    n = MAX_STREAMS_PER_TENANT + 6
    body = {"kind": "webhook", "url": HOOK, "secret": "whsec-0-0123456789"}
    answers = await asyncio.gather(
        *(
            client.post("/v1/streams", json={**body, "name": f"s{i}"}, headers=admin)
            for i in range(n)
        )
    )
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {201, 422}, statuses
    docs = await stored_streams(settings)
    assert statuses.count(201) == len(docs) == MAX_STREAMS_PER_TENANT, (statuses, len(docs))


async def test_a_burst_of_mixed_admin_requests_over_http_answers_no_500(
    http: httpx.AsyncClient, live: LiveApi, settings: AuditSettings
) -> None:
    """The API on a real port: 60 admin requests of every kind at once (masking, retention,
    streams created, renamed and deleted, tokens) answer only what a serial order could
    (2xx, 404 for a destination another request deleted), never 5xx."""
    admin = bearer(settings, scopes=ADMIN)
    await live.call(
        lambda s: s.users.add("burst-svc", "service", "burst-secret-0", "acme", ["events:read"])
    )
    made = await http.post(
        "/v1/streams",
        json={"kind": "webhook", "name": "s", "url": HOOK, "secret": "whsec-0-0123456789"},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    token_form = {
        "grant_type": "client_credentials",
        "client_id": "burst-svc",
        "client_secret": "burst-secret-0",
    }
    requests = []
    for i in range(6):
        rules = {"rules": [{"path": f"metadata.f{i}", "action": "hash"}]}
        stream = {"kind": "webhook", "name": f"n{i}", "url": HOOK, "secret": "whsec-1-0123456789"}
        requests += [
            http.put("/v1/masking", json=rules, headers=admin),
            http.put("/v1/retention", json={"days": 30 + i}, headers=admin),
            http.post("/v1/streams", json=stream, headers=admin),
            http.put(f"/v1/streams/{sid}", json={"name": f"r{i}"}, headers=admin),
            http.put(
                f"/v1/streams/{sid}", json={"secret": f"whsec-r{i}-0123456789"}, headers=admin
            ),
            http.delete(f"/v1/streams/{sid}", headers=admin),
            http.get(f"/v1/streams/{sid}", headers=admin),
            http.get("/v1/masking", headers=admin),
            http.get("/v1/retention", headers=admin),
            http.post("/v1/token", data=token_form),
        ]
    answers = await asyncio.gather(*requests)
    statuses = [(a.request.method, a.request.url.path, a.status_code) for a in answers]
    assert all(s < 500 for _, _, s in statuses), statuses
    deletes = [s for m, p, s in statuses if m == "DELETE"]
    assert sorted(deletes) == [204] + [404] * 5, statuses
    for method, path, status in statuses:
        allowed = {200, 201, 204} | ({404} if path.endswith(sid) else set())
        assert status in allowed, (method, path, status)
