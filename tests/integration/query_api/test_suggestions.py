"""GET /v1/suggestions reads a bounded number of the tenant's newest events, on the
real store: its cost does not grow with the tenant (it aggregated the whole tenant,
three times: ~2.5 s at 20,000 events on SecantusDB, one pass over every event on
MongoDB), and erased events still add nothing."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from pymongo import IndexModel

import query_api.store
from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES
from tests.helpers import T0, Store, bearer, make_event

pytestmark = pytest.mark.integration


async def suggestions(http: httpx.AsyncClient, settings: AuditSettings) -> dict[str, list[str]]:
    resp = await http.get("/v1/suggestions", headers=bearer(settings))
    assert resp.status_code == 200, resp.text
    body: dict[str, list[str]] = resp.json()
    return body


async def test_suggestions_come_from_the_newest_events(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_api.store, "SUGGESTION_EVENTS", 25, raising=False)
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    old = {
        "occurred_at": (T0 - timedelta(days=30)).isoformat(),
        "actor": {"id": "old-actor"},
        "action": "legacy.export",
        "targets": [{"type": "legacy", "id": "1"}],
    }
    events = [make_event(900 + n, **old) for n in range(3)]
    events += [make_event(n) for n in range(30)]  # newer than every old one
    events += [make_event(n, tenant="globex", actor={"id": "globex-admin"}) for n in range(3)]
    await db.put(events)
    found = await suggestions(http, settings)
    assert found == {
        "actions": ["invoice.create", "invoice.update", "user.login"],
        "actors": ["alice", "bob"],
        "target_types": ["invoice"],
    }


async def test_suggestions_of_a_small_tenant_and_erased_events(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await db.events.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
    gone = {"actor": {"id": "gone-actor"}, "targets": [{"type": "gone", "id": "1"}]}
    events = [make_event(n) for n in range(6)] + [make_event(6, action="user.erase", **gone)]
    events.append(make_event(7, occurred_at=(T0 - timedelta(days=400)).isoformat()))
    await db.put(events)
    erased = {"erased": {"by": "x", "why": "gdpr"}}
    await db.events.update_one(
        {"_id": "acme/acme-000006"}, {"$set": erased, "$unset": {"actor": "", "targets": ""}}
    )
    found = await suggestions(http, settings)
    assert found["actors"] == ["alice", "bob"]  # the erased event's actor is not offered
    assert found["target_types"] == ["invoice"]
    # user.erase: an erased event keeps its action, but adds nothing; a year-old one counts.
    assert found["actions"] == ["invoice.create", "invoice.update", "user.login"]
