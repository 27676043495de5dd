"""Issue 14 items 2, 4 and 5 at the API: calendar edges, one validator, a frozen store.

Real Tansu, SecantusDB and redis-server; the frozen-store test starts its own
SecantusDB and SIGSTOPs it (the session-wide servers are never stopped).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from audit_events.settings import AuditSettings
from auditstream.embedded import Server
from tests.helpers import Store, bearer, eventually, freeze, make_event, nested, serve_api

pytestmark = pytest.mark.integration

EDGES = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")
PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == PROBLEM


@pytest.mark.parametrize("when", EDGES)
async def test_calendar_edge_dates_are_4xx_everywhere(
    http: httpx.AsyncClient, settings: AuditSettings, db: Store, when: str
) -> None:
    auth = bearer(settings)
    admin = bearer(settings, scopes="events:read events:admin")
    event = make_event(1)
    await db.put([event])
    posted = await http.post("/v1/events", json={**_event(), "occurred_at": when}, headers=auth)
    assert_problem(posted, 422)
    for name in ("since", "until"):
        assert_problem(await http.get("/v1/events", params={name: when}, headers=auth), 400)
    history = "/v1/targets/invoice/1/history"
    assert_problem(await http.get(history, params={"as_of": when}, headers=auth), 400)
    cursor = base64.urlsafe_b64encode(orjson.dumps([when, "x"])).decode().rstrip("=")
    assert_problem(await http.get("/v1/events", params={"cursor": cursor}, headers=auth), 400)
    put = await http.put(
        f"/v1/events/{event.id}",
        json={"reason": "fix", "set": {"occurred_at": when}},
        headers=admin,
    )
    assert_problem(put, 422)


def _event(**fields: Any) -> dict[str, Any]:
    return {"tenant": "acme", "action": "a.b", **fields}


async def test_what_the_worker_rejects_the_api_refuses_with_422(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    auth = {**bearer(settings), "Content-Type": "application/json"}
    deep = orjson.dumps(_event(changes={"f": {"old": nested(199)}}))
    assert_problem(await http.post("/v1/events", content=deep, headers=auth), 422)
    # past the configured depth, well short of any parser's recursion limit
    just_too_deep = _event(changes={"f": {"new": nested(settings.max_metadata_depth + 1)}})
    assert_problem(await http.post("/v1/events", json=just_too_deep, headers=auth), 422)
    big = b'{"tenant": "acme", "action": "a.b", "metadata": {"n": 18446744073709551616}}'
    resp = await http.post("/v1/events", content=big, headers=auth)
    assert_problem(resp, 422)
    assert "64 bits" in resp.text
    in_changes = b'{"tenant":"acme","action":"a.b","changes":{"f":{"old":[18446744073709551616]}}}'
    assert_problem(await http.post("/v1/events", content=in_changes, headers=auth), 422)


async def test_a_frozen_store_answers_503_with_retry_after_never_500_or_a_hang(
    settings: AuditSettings, own_mongo: Server
) -> None:
    frozen = settings.model_copy(update={"mongo_uri": own_mongo.url, "mongo_timeout_ms": 1500})
    api = serve_api(frozen)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=20) as client:
            auth = bearer(settings)
            assert (await client.get("/v1/events", headers=auth)).status_code == 200
            freeze(own_mongo, True)
            started = time.monotonic()
            listed = await client.get("/v1/events", params={"actor": "nobody"}, headers=auth)
            assert_problem(listed, 503)
            assert int(listed.headers["Retry-After"]) > 0
            one = await client.get("/v1/events/some-id", headers=auth)
            assert_problem(one, 503)
            waited = await client.post("/v1/events?wait=true", json=_event(), headers=auth)
            assert waited.status_code == 202, waited.text  # in Kafka: accepted, not 500
            assert waited.json()["status"] == "accepted"
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "mongodb" in ready.json()["down"]
            elapsed = time.monotonic() - started
            assert elapsed < 20  # each call bounded by the 1.5 s store timeout (+ wait)
            freeze(own_mongo, False)

            # back: the same read answers again
            async def answers() -> bool:
                again = await client.get("/v1/events", params={"actor": "nobody"}, headers=auth)
                return again.status_code == 200

            await eventually(answers, 30, 0.05, what="the read answers again")
    finally:
        freeze(own_mongo, False)
        api.stop()


async def test_a_valid_correction_of_deep_values_is_accepted_not_500(
    http: httpx.AsyncClient, settings: AuditSettings, db: Store
) -> None:
    # The control event wraps the correction (metadata.set.changes.<f>.old): the
    # validator allows that envelope for control events, so the worker accepts it too.
    admin = bearer(settings, scopes="events:read events:admin")
    event = make_event(2)
    await db.put([event])
    depth = settings.max_metadata_depth
    for fields in (
        {"metadata": nested(depth)},
        {"changes": {"f": {"old": nested(depth), "new": 1}}},
        {"metadata": {"pad": "x" * (settings.max_metadata_bytes - 100)}, "description": "y"},
    ):
        put = await http.put(
            f"/v1/events/{event.id}", json={"reason": "fix", "set": fields}, headers=admin
        )
        assert put.status_code == 202, put.text
    too_deep = {"metadata": nested(depth + 1)}
    put = await http.put(
        f"/v1/events/{event.id}", json={"reason": "fix", "set": too_deep}, headers=admin
    )
    assert_problem(put, 422)
    huge = {"changes": {"f": {"old": "x" * settings.max_event_bytes, "new": 1}}}
    put = await http.put(
        f"/v1/events/{event.id}", json={"reason": "fix", "set": huge}, headers=admin
    )
    assert_problem(put, 413)  # was 202, then dead-lettered by the worker as oversized


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e999"])
async def test_nan_and_infinity_are_422_not_published_as_null(
    http: httpx.AsyncClient, settings: AuditSettings, number: bytes
) -> None:
    auth = {**bearer(settings), "Content-Type": "application/json"}
    for body in (
        b'{"tenant":"acme","action":"a.b","metadata":{"x":%s}}' % number,
        b'{"events":[{"tenant":"acme","action":"a.b","changes":{"f":{"old":[%s]}}}]}' % number,
    ):
        resp = await http.post("/v1/events", content=body, headers=auth)
        assert_problem(resp, 422)  # was 202, published (and stored) with null instead
        assert "not a finite number" in resp.text


async def test_one_request_reusing_an_id_for_another_content_is_422(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    # The worker stores the first and dead-letters the second ("duplicate id with
    # different content"): answering 202 for both promised what was never stored.
    auth = bearer(settings, tenant=["acme", "globex"])
    first, other = _event(id="dup-1"), _event(id="dup-1", action="a.c")
    resp = await http.post("/v1/events", json={"events": [first, other]}, headers=auth)
    assert_problem(resp, 422)
    (error,) = resp.json()["errors"]
    assert (error["loc"], error["type"]) == (["events", 1, "id"], "duplicate_id")
    assert "id 'dup-1' of tenant acme is events[0] too, with other content" in error["msg"]

    # the same event twice is one event (idempotent), and ids are per tenant
    again = await http.post("/v1/events", json={"events": [first, first]}, headers=auth)
    assert again.status_code == 202 and again.json()["ids"] == ["dup-1", "dup-1"]
    theirs = {**other, "tenant": "globex"}
    both = await http.post("/v1/events", json={"events": [first, theirs]}, headers=auth)
    assert both.status_code == 202


# (name, raw body, status): what test_api_injection (operator injection), test_api_ingest
# (bounds, field paths) and the tests above do not send already.
HOSTILE_BODIES: list[tuple[str, bytes, int]] = [
    ("garbage bytes", b"\xff\xfe\x00garbage", 400),
    ("empty", b"", 400),
    ("not UTF-8 in a string", b'{"tenant":"acme","action":"a.b","description":"\xc3\x28"}', 400),
    ("lone surrogate", b'{"tenant":"acme","action":"a.b","description":"\\ud800"}', 400),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"tenant":"acme","action":"a.b"}', 400),
    ("UTF-16", '{"tenant":"acme","action":"a.b"}'.encode("utf-16"), 400),
    ("two documents", b'{"tenant":"acme","action":"a.b"}{"tenant":"acme","action":"a.b"}', 400),
    ("array", b"[1,2]", 422),
    ("string", b'"x"', 422),
    ("null", b"null", 422),
    ("nested lists", b'{"events":' + b"[" * 5000 + b"]" * 5000 + b"}", 422),
    ("events null", b'{"events":null}', 422),
    ("events empty", b'{"events":[]}', 422),
    ("events of lists", b'{"events":[[1]]}', 422),
    ("a field beside events", b'{"events":[{"tenant":"acme","action":"a.b"}],"tenant":"x"}', 422),
    ("numeric id", b'{"id":123,"tenant":"acme","action":"a.b"}', 422),
    ("NUL in the id", b'{"id":"a\\u0000","tenant":"acme","action":"a.b"}', 422),
    ("NUL in a metadata key", b'{"tenant":"acme","action":"a.b","metadata":{"a\\u0000":1}}', 422),
    ("tenant with a newline", b'{"tenant":"acme\\n","action":"a.b"}', 422),
    ("fullwidth tenant", b'{"tenant":"\\uff41\\uff43\\uff4d\\uff45","action":"a.b"}', 422),
    ("fullwidth action", b'{"tenant":"acme","action":"\\uff41.b"}', 422),
    (
        "occurred_at without zone",
        b'{"tenant":"acme","action":"a.b","occurred_at":"2020-01-01T00:00:00"}',
        422,
    ),
    (
        "occurred_at year 10000",
        b'{"tenant":"acme","action":"a.b","occurred_at":"+10000-01-01T00:00:00Z"}',
        422,
    ),
    ("tenant of another case", b'{"tenant":"Acme","action":"a.b"}', 403),
    (
        "duplicate keys, another tenant last",
        b'{"tenant":"acme","tenant":"globex","action":"a.b"}',
        403,
    ),
    ("reserved namespace", b'{"tenant":"acme","action":"auditstream.event.erased"}', 422),
]


async def test_hostile_bodies_answer_4xx_problem_json_never_500(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    auth = {**bearer(settings), "Content-Type": "application/json"}
    got = {}
    for name, raw, _ in HOSTILE_BODIES:
        resp = await http.post("/v1/events?wait=true", content=raw, headers=auth)
        assert resp.headers["Content-Type"] == PROBLEM, (name, resp.text)
        got[name] = resp.status_code
    assert got == {name: status for name, _, status in HOSTILE_BODIES}


async def test_hostile_records_on_the_checkpoints_topic_never_make_verify_500(
    http: httpx.AsyncClient, settings: AuditSettings
) -> None:
    # Any producer that can write the topic: one non-object record answered 500 to
    # every tenant's GET /v1/verify, for good (the topic keeps everything).
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in (b"[1]", b'"x"', b"null", b'{"tenant":"globex","seq":"x"}'):
            await producer.send_and_wait(settings.topic_checkpoints, value, key=b"acme")
    finally:
        await producer.stop()
    acme = await http.get("/v1/verify", headers=bearer(settings))
    assert acme.status_code == 200 and acme.json()["ok"], acme.text
    globex = await http.get("/v1/verify", headers=bearer(settings, tenant="globex"))
    assert globex.status_code == 200, globex.text  # its unsigned checkpoint: a defect
    assert (globex.json()["ok"], globex.json()["reason"]) == (False, "bad_checkpoint")
