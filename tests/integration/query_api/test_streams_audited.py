"""A change of where the trail is sent is in the trail: every accepted create, update
(rename, URL, filters, pause), secret rotation and delete of a ``/v1/streams``
destination publishes one ``stream.destination.*`` event of the tenant (actor = the
token's subject, target = the destination), never with a secret or a URL's
credentials; a refused change publishes nothing; concurrent changes each publish
their own. The API in-process on the real SecantusDB, Tansu and redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from audit_events.streams import MAX_STREAMS_PER_TENANT
from tests.helpers import eventually
from tests.integration.stream_processor.test_archive import topic_records

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"
HOOK = "https://127.0.0.1:9/hook"  # never called: no stream worker runs here
SECRET = "whsec-first-0123456789"
PREFIX = "stream.destination."


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    return settings.model_copy(update={"streams_allow_private_hosts": True})


async def trail(settings: AuditSettings) -> list[dict[str, Any]]:
    """Every ``stream.destination.*`` event in the tenant's topic, in log order."""
    records = await topic_records(settings)
    events = [
        orjson.loads(value)
        for (topic, _, _), (_, value, *_) in sorted(records.items())
        if topic == settings.topic_events
    ]
    return [e for e in events if str(e.get("action", "")).startswith(PREFIX)]


async def create(client: Client, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    body = {"kind": "webhook", "name": "siem", "url": HOOK, "secret": SECRET, **body}
    r = await client.post("/v1/streams", json=body, headers=admin)
    assert r.status_code == 201, await r.get_data(as_text=True)
    out: dict[str, Any] = await r.get_json()
    return out


async def test_each_destination_change_is_one_event_without_secrets(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    admin = auth(scopes=ADMIN)
    url = f"{HOOK}?token=abc123&format=json&sig=0123456789abcdef0123456789"
    made = await create(client, admin, url=url, filters={"actions": ["invoice.*"]})
    assert made["audited"] is True
    sid = made["id"]
    renamed = await client.put(
        f"/v1/streams/{sid}",
        json={"name": "siem-2", "url": HOOK + "/v2", "filters": {"actions": ["user.*"]}},
        headers=admin,
    )
    assert renamed.status_code == 200 and (await renamed.get_json())["audited"] is True
    paused = await client.put(f"/v1/streams/{sid}", json={"enabled": False}, headers=admin)
    assert (await paused.get_json())["audited"] is True
    rotated = await client.put(
        f"/v1/streams/{sid}", json={"secret": "whsec-second-0123456789"}, headers=admin
    )
    assert (await rotated.get_json())["audited"] is True
    gone = await client.delete(f"/v1/streams/{sid}", headers=admin)
    assert gone.status_code == 204 and gone.headers["X-Audited"] == "true"

    events = await trail(settings)
    assert [e["action"] for e in events] == [
        "stream.destination.created",
        "stream.destination.updated",
        "stream.destination.updated",
        "stream.destination.secret_rotated",
        "stream.destination.deleted",
    ]
    assert [e["crud"] for e in events] == ["c", "u", "u", "u", "d"]
    for e in events:
        assert e["tenant"] == "acme"
        assert e["actor"] == {"id": "tester", "type": "admin"}
        assert e["targets"] == [
            {"type": "stream_destination", "id": sid, "name": e["targets"][0]["name"]}
        ]
        assert e["source"] == {"service": "auditstream-api"}
        text = orjson.dumps(e).decode()
        for secret in (SECRET, "whsec-second", "abc123", "0123456789abcdef0123456789", "fernet"):
            assert secret not in text, (secret, text)
    created, renamed_ev, paused_ev, rotated_ev, deleted = events
    assert created["metadata"]["url"] == f"{HOOK}?token=REDACTED&format=json&sig=REDACTED"
    assert created["metadata"]["kind"] == "webhook" and created["metadata"]["name"] == "siem"
    assert created["metadata"]["filters"] == {"actions": ["invoice.*"], "outcomes": []}
    assert created["metadata"]["secret_set"] is True
    assert renamed_ev["metadata"]["changed"] == ["filters", "name", "url"]
    assert renamed_ev["changes"]["name"] == {"old": "siem", "new": "siem-2"}
    assert renamed_ev["changes"]["url"] == {
        "old": f"{HOOK}?token=REDACTED&format=json&sig=REDACTED",
        "new": HOOK + "/v2",
    }
    assert renamed_ev["changes"]["filters"]["new"] == {"actions": ["user.*"], "outcomes": []}
    assert paused_ev["changes"] == {"enabled": {"old": True, "new": False}}
    assert rotated_ev["metadata"]["changed"] == ["secret"]
    assert rotated_ev["metadata"]["secret_rotated"] is True
    assert "secret" not in rotated_ev["changes"]
    assert deleted["metadata"]["name"] == "siem-2" and deleted["metadata"]["url"] == HOOK + "/v2"


async def test_refused_changes_publish_nothing(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """404, 422 (invalid, credentials in the URL, the tenant's limit), a PUT that
    changes nothing: no event."""
    admin = auth(scopes=ADMIN)
    sid = (await create(client, admin))["id"]
    before = len(await trail(settings))
    assert before == 1
    refused = [
        (client.put("/v1/streams/st_nope", json={"name": "x"}, headers=admin), 404),
        (client.delete("/v1/streams/st_nope", headers=admin), 404),
        (client.put(f"/v1/streams/{sid}", json={"batch_size": 0}, headers=admin), 422),
        (
            client.put(
                f"/v1/streams/{sid}", json={"url": "https://u:p@127.0.0.1:9/"}, headers=admin
            ),
            422,
        ),
        (client.put(f"/v1/streams/{sid}", json={"name": "x"}, headers=auth("other", ADMIN)), 404),
        (client.post("/v1/streams", json={"kind": "webhook", "name": "x"}, headers=admin), 422),
    ]
    for call, status in refused:
        r = await call
        assert r.status_code == status, await r.get_data(as_text=True)
    same = await client.put(f"/v1/streams/{sid}", json={"name": "siem"}, headers=admin)
    assert same.status_code == 200 and (await same.get_json())["audited"] is None
    for i in range(MAX_STREAMS_PER_TENANT - 1):
        await create(client, admin, name=f"s{i}")
    full = await client.post(
        "/v1/streams",
        json={"kind": "webhook", "name": "one-too-many", "url": HOOK, "secret": SECRET},
        headers=admin,
    )
    assert full.status_code == 422
    events = await trail(settings)
    assert [e["action"] for e in events] == ["stream.destination.created"] * MAX_STREAMS_PER_TENANT
    assert "one-too-many" not in orjson.dumps(events).decode()


async def test_concurrent_destination_changes_each_publish_their_own_event(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    """At once: more creates than the limit, 8 renames of one destination, 6 DELETEs of
    another. One ``created`` per 201, one ``updated`` per rename with its own old ->
    new (the olds and news chain: a serial order), one ``deleted`` for the 204."""
    admin = auth(scopes=ADMIN)
    renamed = (await create(client, admin, name="r"))["id"]
    doomed = (await create(client, admin, name="d"))["id"]
    n_create, n_put, n_del = MAX_STREAMS_PER_TENANT + 4, 8, 6
    body = {"kind": "webhook", "url": HOOK, "secret": SECRET}
    answers = await asyncio.gather(
        *(client.post("/v1/streams", json={**body, "name": f"c{i}"}, headers=admin)
          for i in range(n_create)),
        *(client.put(f"/v1/streams/{renamed}", json={"name": f"r{i}"}, headers=admin)
          for i in range(n_put)),
        *(client.delete(f"/v1/streams/{doomed}", headers=admin) for _ in range(n_del)),
    )  # fmt: skip
    creates = answers[:n_create]
    puts = answers[n_create : n_create + n_put]
    deletes = answers[n_create + n_put :]
    made = [(await r.get_json())["id"] for r in creates if r.status_code == 201]
    assert {r.status_code for r in creates} <= {201, 422}
    assert [r.status_code for r in puts] == [200] * n_put
    assert sorted(r.status_code for r in deletes) == [204] + [404] * (n_del - 1)

    events = (await trail(settings))[2:]  # after the two set-up creates
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_action.setdefault(e["action"], []).append(e)
    assert set(by_action) == {PREFIX + a for a in ("created", "updated", "deleted")}
    assert sorted(e["targets"][0]["id"] for e in by_action[PREFIX + "created"]) == sorted(made)
    assert [e["targets"][0]["id"] for e in by_action[PREFIX + "deleted"]] == [doomed]
    updates = by_action[PREFIX + "updated"]
    assert {e["targets"][0]["id"] for e in updates} == {renamed}
    news = sorted(e["changes"]["name"]["new"] for e in updates)
    assert news == sorted(f"r{i}" for i in range(n_put))
    # each old is the name some other change left: r, then the seven news but the last
    olds = sorted(e["changes"]["name"]["old"] for e in updates)
    assert len(set(olds)) == n_put and "r" in olds and set(olds) - {"r"} < set(news), (olds, news)


async def test_a_destinations_changes_are_its_history(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., Any],
) -> None:
    """With the processor storing the trail, the destination is a target like any other:
    ``GET /v1/targets/stream_destination/{id}/history`` is its timeline with the diffs."""
    processors()
    admin = auth(scopes=ADMIN)
    sid = (await create(client, admin))["id"]
    renamed = await client.put(f"/v1/streams/{sid}", json={"name": "siem-2"}, headers=admin)
    assert renamed.status_code == 200
    assert (await client.delete(f"/v1/streams/{sid}", headers=admin)).status_code == 204

    async def timeline() -> list[dict[str, Any]] | None:
        r = await client.get(f"/v1/targets/stream_destination/{sid}/history", headers=admin)
        assert r.status_code == 200, await r.get_data(as_text=True)
        data: list[dict[str, Any]] = (await r.get_json())["data"]
        return data if len(data) == 3 else None

    events = await eventually(timeline, 60, what="the destination's three changes stored")
    assert [e["action"] for e in events] == [PREFIX + a for a in ("created", "updated", "deleted")]
    assert events[1]["changes"] == {"name": {"old": "siem", "new": "siem-2"}}
    assert SECRET not in orjson.dumps(events).decode()
