"""A destination change whose settings are too large for one audit event's metadata
(32 Datadog tags of 2,500 characters, 100 long action filters) is still answered as
saved (never 500): the event is published with the settings it can hold."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from query_api.auth import mint_token
from tests.integration.query_api.test_streams_audited import ADMIN, trail

pytestmark = pytest.mark.integration
TAGS = [f"t{i}:" + "x" * 2500 for i in range(32)]
ACTIONS = [f"a{i}." + "y" * 240 + ".*" for i in range(100)]


@pytest.fixture
def settings(settings: AuditSettings) -> AuditSettings:
    return settings.model_copy(update={"streams_allow_private_hosts": True})


async def test_changes_of_large_destinations_answer_saved_and_audited(
    client: Client, auth: Callable[..., dict[str, str]], settings: AuditSettings
) -> None:
    admin = auth(scopes=ADMIN)
    body: dict[str, Any] = {
        "kind": "datadog",
        "name": "dd",
        "url": "https://127.0.0.1:9/api/v2/logs",
        "secret": "dd-key-12345",
        "tags": TAGS,
        "filters": {"actions": ACTIONS},
    }
    made = await client.post("/v1/streams", json=body, headers=admin)
    assert made.status_code == 201, await made.get_data(as_text=True)
    sid = (await made.get_json())["id"]
    changed = await client.put(
        f"/v1/streams/{sid}",
        json={"tags": [t.upper() for t in TAGS], "filters": {"actions": ACTIONS[::-1]}},
        headers=admin,
    )
    assert changed.status_code == 200, await changed.get_data(as_text=True)
    gone = await client.delete(f"/v1/streams/{sid}", headers=admin)
    assert gone.status_code == 204
    assert [(await made.get_json())["audited"], (await changed.get_json())["audited"]] == [True] * 2
    assert gone.headers["X-Audited"] == "true"
    events = await trail(settings)
    assert [e["action"] for e in events] == [
        "stream.destination.created",
        "stream.destination.updated",
        "stream.destination.deleted",
    ]
    assert all(len(orjson.dumps(e["metadata"])) <= 64 * 1024 for e in events)
    created, updated, deleted = events
    assert deleted["metadata"]["tags"]["sha256"] == tags_new_sha(updated)
    shown = created["metadata"]["tags"]
    assert set(shown) == {"sha256", "bytes"} and created["metadata"]["name"] == "dd"
    assert updated["metadata"]["changed"] == ["filters", "tags"]
    tags = updated["changes"]["tags"]
    assert tags["old"] == shown and tags["new"]["sha256"] != shown["sha256"]


def tags_new_sha(updated: dict[str, Any]) -> str:
    digest: str = updated["changes"]["tags"]["new"]["sha256"]
    return digest


async def test_a_change_by_a_subject_no_event_can_name_is_saved_not_500(
    client: Client, settings: AuditSettings
) -> None:
    """An admin token whose subject is longer than an actor id may be (256 characters:
    an external issuer's): the change is saved and audited with the subject's first
    180 characters and its digest as the actor id, not 500 after it was saved (a
    client would retry a change already made)."""
    token = mint_token(settings, subject="s" * 300, tenant="acme", scopes=ADMIN.split())
    admin = {"Authorization": f"Bearer {token}"}
    body = {"kind": "webhook", "name": "w", "url": "https://127.0.0.1:9/h", "secret": "s" * 16}
    made = await client.post("/v1/streams", json=body, headers=admin)
    assert made.status_code == 201, await made.get_data(as_text=True)
    assert (await made.get_json())["audited"] is True
    retention = await client.put("/v1/retention", json={"days": 400}, headers=admin)
    assert retention.status_code == 200, await retention.get_data(as_text=True)
    assert (await retention.get_json())["audited"] is True
    (created,) = await trail(settings)
    digest = hashlib.sha256(b"s" * 300).hexdigest()
    assert created["actor"]["id"] == "s" * 180 + f"…sha256={digest}"
