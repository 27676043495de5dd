"""Concurrent corrections of one event (PUT /v1/events/{id}), on real servers (a
processor process, the API in-process): every correction accepted is applied, and the
event reads as a serial order of them reads, whatever order the log holds them in.
(Concurrent erasures, and an erasure racing a correction:
tests/integration/stream_processor/test_admin_races.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from quart.typing import TestClientProtocol as Client

from audit_events import chain
from tests.conftest import ProcessorProcess
from tests.helpers import eventually

pytestmark = pytest.mark.integration
ADMIN = "events:read events:write events:admin"


async def test_concurrent_corrections_of_one_actor_all_apply(
    client: Client,
    auth: Callable[..., dict[str, str]],
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
) -> None:
    """Four admins correct one event at once, two of them different fields of its actor:
    each is 202 and each is applied, so the event ends with the new actor id AND the new
    actor name (a correction amends ``actor`` field by field: one made from a view
    without the other's change must not undo it), and its other fields as corrected."""
    processors()
    event = {
        "id": "c-1",
        "tenant": "acme",
        "action": "invoice.update",
        "actor": {"id": "u-1", "type": "user", "name": "Ann"},
        "context": {"ip": "192.0.2.1", "user_agent": "curl"},
        "description": "before",
    }
    posted = await client.post("/v1/events", json=event, headers=auth())
    assert posted.status_code == 202

    async def stored() -> dict[str, Any] | None:
        return await store.find_one({"_id": "acme/c-1"})

    await eventually(stored, timeout=60, what="the event stored")
    admin = auth(scopes=ADMIN)
    fixes = [
        {"actor": {"id": "u-2"}},
        {"actor": {"name": "Bob"}},
        {"context": {"ip": "192.0.2.2"}},
        {"description": "after"},
    ]
    answers = await asyncio.gather(
        *(
            client.put("/v1/events/c-1", json={"reason": f"fix {i}", "set": fix}, headers=admin)
            for i, fix in enumerate(fixes)
        )
    )
    assert [a.status_code for a in answers] == [202] * len(fixes)

    async def all_applied() -> bool:
        doc = await stored()
        return doc is not None and len(doc.get("corrections") or ()) == len(fixes)

    await eventually(all_applied, timeout=60, what="every correction applied")
    shown = await (await client.get("/v1/events/c-1", headers=auth())).get_json()
    assert shown["actor"] == {"id": "u-2", "type": "user", "name": "Bob"}
    assert shown["context"] == {"ip": "192.0.2.2", "user_agent": "curl"}
    assert shown["description"] == "after"
    assert await store.count_documents({"action": chain.CORRECTED_ACTION}) == len(fixes)
    report = await (await client.get("/v1/verify", headers=auth())).get_json()
    assert (report["ok"], report["corrected"]) == (True, 1), report
