"""NoSQL-injection suite over real HTTP: operator-shaped query strings, paths,
JSON bodies and token forms are refused (400/422) or matched literally, and
none of them changes what a plain read returns."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from audit_events.settings import AuditSettings
from tests.helpers import LiveApi, Store, bearer, make_event

pytestmark = pytest.mark.integration


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


# Query strings sent verbatim to GET /v1/events. Expected: 400, or 200 with no rows
# (every seeded row has ordinary values, so a literal match finds nothing).
QUERY_ATTACKS = [
    "actor[$ne]=x",
    "actor[$gt]=",
    'actor={"$gt":""}',
    'actor={"$ne":null}',
    "actor=%7B%22%24ne%22%3A%20null%7D",
    "$where=1",
    "$where=this.actor.id%3D%3D'alice'",
    "actor.id=alice",
    "tenant.$ne=x",
    "$or[0][actor]=alice",
    "action[$regex]=.*",
    "action=.*",
    "action=^invoice",
    "action=invoice.*%7C.*",
    'action={"$regex":".*"}',
    "target_id[$ne]=1",
    'target_id={"$exists":true}',
    'target_type={"$in":["invoice"]}',
    "outcome[$in]=success",
    'outcome={"$ne":"x"}',
    "crud[$ne]=z",
    'source={"$ne":null}',
    "since[$gt]=",
    'since={"$gt":""}',
    'until={"$lt":"9999"}',
    'limit={"$gt":0}',
    "limit[$gt]=0",
    "limit=0",
    "limit=100000",
    "order[$ne]=asc",
    "order=-1",
    'q={"$ne":""}',
    "q=$where",
    "q=.*",
    "actor=alice&actor[$ne]=bob",
    "actor=alice&actor=bob",
    "tenant[$ne]=acme",
    f"cursor={_cursor(['2026-01-01T00:00:00+00:00', {'$gt': ''}])}",
    f"cursor={_cursor([{'$gt': ''}, 'x'])}",
    f"cursor={_cursor({'$where': '1'})}",
    "cursor=%24where",
    "actor=%00",
    "actor=alice%00",
    "description=event",
    "_id=acme-000001",
    "search=event",
]

PATH_ATTACKS = [
    '{"$ne":null}',
    "%7B%22%24ne%22%3Anull%7D",
    "$where",
    "acme-000001%00",
    "acme-.*",
    "%2E%2A",
]

BODY_ATTACKS: list[Any] = [
    {"tenant": {"$ne": ""}, "action": "a.b"},
    {"tenant": "acme", "action": {"$gt": ""}},
    {"tenant": "acme", "action": "a.b", "id": {"$ne": None}},
    {"tenant": "acme", "action": "a.b", "_id": "x"},
    {"tenant": "acme", "action": "a.b", "$where": "1"},
    {"tenant": "acme", "action": "a.b", "actor": {"id": {"$ne": None}}},
    {"tenant": "acme", "action": "a.b", "actor": {"id": "a", "$set": {"tenant": "globex"}}},
    {"tenant": "acme", "action": "a.b", "metadata": {"$where": "sleep(1000)"}},
    {"tenant": "acme", "action": "a.b", "metadata": {"a": {"$gt": 1}}},
    {"tenant": "acme", "action": "a.b", "metadata": {"a.b": 1}},
    {"tenant": "acme", "action": "a.b", "changes": {"$set": {"old": 1, "new": 2}}},
    {"tenant": "acme", "action": "a.b", "changes": {"a.b": {"old": 1, "new": 2}}},
    {"tenant": "acme", "action": "a.b", "targets": {"$elemMatch": {"id": "1"}}},
    {"tenant": "acme", "action": "a.b", "occurred_at": {"$date": 0}},
    {"events": {"$gt": ""}},
    {"events": [{"tenant": "acme", "action": "a.b", "outcome": {"$ne": "x"}}]},
    {"tenant": ["acme", "globex"], "action": "a.b"},
]


async def _baseline(http: httpx.AsyncClient, auth: dict[str, str]) -> list[str]:
    resp = await http.get("/v1/events?limit=1000", headers=auth)
    assert resp.status_code == 200
    return [e["id"] for e in resp.json()["data"]]


async def test_query_string_injection(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings, live: LiveApi
) -> None:
    await db.put([make_event(n) for n in range(30)])
    await db.put([make_event(n, tenant="globex") for n in range(5)])
    auth = bearer(settings)
    before = await _baseline(http, auth)
    assert len(before) == 30
    finds_before = live.counter.finds
    outcomes: dict[str, tuple[int, int]] = {}
    refused_finds = 0
    for attack in QUERY_ATTACKS:
        finds = live.counter.finds
        resp = await http.get(f"/v1/events?{attack}", headers=auth)
        if resp.status_code != 200:
            refused_finds += live.counter.finds - finds
        rows = len(resp.json()["data"]) if resp.status_code == 200 else -1
        outcomes[attack] = (resp.status_code, rows)
        if resp.status_code != 200:
            assert resp.headers["Content-Type"] == "application/problem+json", attack
    bad = {a: o for a, o in outcomes.items() if o not in ((400, -1), (403, -1), (200, 0))}
    assert bad == {}
    # '?tenant[$ne]=' and friends never widen the tenant
    assert all(o[1] <= 0 for o in outcomes.values())
    refused = sum(1 for s, _ in outcomes.values() if s in (400, 403))
    literal = sum(1 for s, _ in outcomes.values() if s == 200)
    assert refused + literal == len(QUERY_ATTACKS)
    # only the literal ones reached MongoDB (each as one windowed read, query_api/listing.py)
    assert refused_finds == 0
    assert live.counter.finds - finds_before >= literal
    assert await _baseline(http, auth) == before
    n = len(QUERY_ATTACKS)
    print(f"\nquery-string injection: {n} attacks, {refused} refused, {literal} literal/empty")


async def test_literal_value_with_operator_characters_matches_literally(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    weird = '{"$gt":""}'
    await db.put([make_event(1), make_event(2, actor={"id": weird, "type": "user"})])
    resp = await http.get("/v1/events", params={"actor": weird}, headers=bearer(settings))
    assert [e["id"] for e in resp.json()["data"]] == ["acme-000002"]


async def test_path_injection(http: httpx.AsyncClient, db: Store, settings: AuditSettings) -> None:
    await db.put([make_event(1)])
    auth = bearer(settings)
    statuses = {}
    for attack in PATH_ATTACKS:
        resp = await http.get(f"/v1/events/{attack}", headers=auth)
        statuses[attack] = resp.status_code
    assert statuses == dict.fromkeys(PATH_ATTACKS, 404)
    assert (await http.get("/v1/events/acme-000001", headers=auth)).status_code == 200


async def test_json_body_injection(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await db.put([make_event(1)])
    auth = bearer(settings, tenant="*")
    statuses = []
    for body in BODY_ATTACKS:
        resp = await http.post(
            "/v1/events",
            content=orjson.dumps(body),
            headers={**auth, "Content-Type": "application/json"},
        )
        statuses.append(resp.status_code)
        assert resp.headers["Content-Type"] == "application/problem+json"
    assert statuses == [422] * len(BODY_ATTACKS)
    print(f"\nJSON body injection: {len(BODY_ATTACKS)} attacks, all 422")
    assert await db.events.count_documents({}) == 1


async def test_token_form_injection(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings, live: LiveApi
) -> None:
    await live.call(
        lambda s: s.users.add("alice", "user", "correct horse", "acme", ["events:read"])
    )
    forms = [
        "grant_type=password&username[$ne]=x&password[$ne]=x",
        'grant_type=password&username={"$gt":""}&password=correct+horse',
        "grant_type=password&username=alice&password[$ne]=",
        'grant_type=password&username=alice&password={"$ne":""}',
        "grant_type=password&username=$where&password=1",
        "grant_type[$ne]=x&username=alice&password=correct+horse",
        "grant_type=client_credentials&client_id[$ne]=x&client_secret[$ne]=x",
        'grant_type=client_credentials&client_id={"$ne":null}&client_secret=x',
    ]
    statuses = []
    for form in forms:
        resp = await http.post(
            "/v1/token",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert "access_token" not in resp.json()
        statuses.append((resp.status_code, resp.json()["error"]))
    assert statuses == [
        (400, "invalid_request"),
        (400, "invalid_grant"),
        (400, "invalid_request"),
        (400, "invalid_grant"),
        (400, "invalid_grant"),
        (400, "invalid_request"),
        (400, "invalid_request"),
        (401, "invalid_client"),
    ]
    print(f"\ntoken form injection: {len(forms)} attacks, none issued a token")
