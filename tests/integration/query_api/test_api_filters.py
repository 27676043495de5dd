"""GET /v1/events narrows by ``q`` (words of the action, description, actor and
targets) and by ``since``/``until`` (``occurred_at``; since inclusive, until exclusive).

Every case asserts the exact ids answered, so an API that ignored one of these
filters (and answered all twelve events) fails here; the viewer test, the only
other user of these parameters, would not notice."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from audit_events.settings import AuditSettings
from tests.helpers import T0, Store, bearer, make_event

pytestmark = pytest.mark.integration
REFUNDS = {3, 7}  # the events whose description says "refund approved"


async def seed(db: Store) -> None:
    """acme-000000 … acme-000011, one second apart from T0; actions cycle
    update/create/login; another tenant's refunds must never show."""
    events = [
        make_event(n, description="refund approved" if n in REFUNDS else f"event number {n}")
        for n in range(12)
    ]
    events += [make_event(n, tenant="globex", description="refund approved") for n in range(3)]
    await db.put(events)


async def listed(
    http: httpx.AsyncClient, settings: AuditSettings, order: str = "asc", **params: str
) -> list[int]:
    """The event numbers GET /v1/events answers for ``params`` (every page)."""
    numbers: list[int] = []
    query: dict[str, str] = {**params, "order": order, "limit": "5"}
    while True:
        resp = await http.get("/v1/events", params=query, headers=bearer(settings))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        numbers += [int(e["id"].removeprefix("acme-")) for e in body["data"]]
        if not body["next_cursor"]:
            return numbers
        query["cursor"] = body["next_cursor"]


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


async def test_q_answers_only_events_with_every_word(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await seed(db)
    assert await listed(http, settings) == list(range(12))  # the unfiltered list
    assert await listed(http, settings, q="refund") == sorted(REFUNDS)
    assert await listed(http, settings, q="Refund, APPROVED!") == sorted(REFUNDS)
    assert await listed(http, settings, order="desc", q="refund") == sorted(REFUNDS, reverse=True)
    assert await listed(http, settings, q="refund number") == []  # every word must match
    assert await listed(http, settings, q="login") == [2, 5, 8, 11]  # the action's words


async def test_since_is_inclusive_and_until_exclusive(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await seed(db)
    assert await listed(http, settings, since=at(3), until=at(6)) == [3, 4, 5]
    assert await listed(http, settings, order="desc", since=at(3), until=at(6)) == [5, 4, 3]
    assert await listed(http, settings, since=at(9)) == [9, 10, 11]
    assert await listed(http, settings, order="desc", until=at(2)) == [1, 0]
    assert await listed(http, settings, since="2026-01-01T00:00:04.5+00:00") == [
        5,
        6,
        7,
        8,
        9,
        10,
        11,
    ]
    assert await listed(http, settings, since=at(12)) == []
    assert await listed(http, settings, since=at(2), until=at(9), q="refund") == [3, 7]
