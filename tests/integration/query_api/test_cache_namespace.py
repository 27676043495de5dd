"""Two deployments (two databases) sharing one Redis never serve each other's reads.

Cache keys and generation counters carry a namespace per deployment (its
database, ``audit_events.cache_keys.cache_namespace``); the processor's
invalidation bumps the counters of its own namespace only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace
from audit_events.codec import content_hash, event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from query_api.app import create_app
from query_api.auth import mint_token
from stream_processor.sinks import RedisInvalidator
from tests.helpers import make_event

pytestmark = pytest.mark.integration


async def _put(settings: AuditSettings, n: int) -> dict[str, Any]:
    event = make_event(n)
    doc = {**event_to_document(event, datetime.now(UTC)), "content_hash": content_hash(event)}
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    try:
        await client[settings.mongo_db][EVENTS_COLLECTION].insert_one(doc)
    finally:
        await client.close()
    return doc


async def test_two_databases_on_one_redis_never_share_reads(settings: AuditSettings) -> None:
    other = settings.model_copy(update={"mongo_db": settings.mongo_db + "_b"})
    await _put(settings, 1)
    await _put(other, 2)
    headers = {
        "Authorization": "Bearer "
        + mint_token(settings, subject="t", tenant="acme", scopes=["events:read"])
    }
    app_a, app_b = create_app(settings), create_app(other)
    async with app_a.test_app(), app_b.test_app():
        a, b = app_a.test_client(), app_b.test_client()

        async def ids(client: Any) -> tuple[list[str], str]:
            resp = await client.get("/v1/events", headers=headers)
            assert resp.status_code == 200
            body = orjson.loads(await resp.get_data())
            return [e["id"] for e in body["data"]], resp.headers["X-Cache"]

        assert await ids(a) == (["acme-000001"], "miss")
        assert await ids(a) == (["acme-000001"], "hit")
        # Same tenant, same query, same Redis: B's own database, not A's cached page.
        assert await ids(b) == (["acme-000002"], "miss")
        assert await ids(b) == (["acme-000002"], "hit")
        one = await a.get("/v1/events/acme-000002", headers=headers)
        assert one.status_code == 404  # B's event is not A's, cached or not

        # B's processor stores an event: B's reads are invalidated, A's stay cached.
        redis = Redis.from_url(settings.redis_url or "")
        try:
            doc = await _put(other, 3)
            await RedisInvalidator(
                redis, other.cache_ttl_seconds, namespace=cache_namespace(other)
            ).bump([doc])
        finally:
            await redis.aclose()
        assert await ids(b) == (["acme-000003", "acme-000002"], "miss")
        assert await ids(a) == (["acme-000001"], "hit")


async def test_login_failures_of_one_deployment_do_not_lock_out_the_other(
    settings: AuditSettings,
) -> None:
    """The login throttle's counters carry the namespace too: A's failed guesses
    for a name never refuse B's logins of that name (429 on A, checked on B)."""
    a_settings = settings.model_copy(update={"login_max_failures_per_user": 2})
    b_settings = a_settings.model_copy(update={"mongo_db": settings.mongo_db + "_b"})
    form = {"grant_type": "password", "username": "shared-name", "password": "wrong"}
    app_a, app_b = create_app(a_settings), create_app(b_settings)
    async with app_a.test_app(), app_b.test_app():
        a, b = app_a.test_client(), app_b.test_client()
        codes = [
            (
                await a.post("/v1/token", form=form, scope_base={"client": (f"10.1.0.{n}", 1)})
            ).status_code
            for n in range(3)
        ]
        assert codes == [400, 400, 429]  # invalid_grant, then refused
        other = await b.post("/v1/token", form=form, scope_base={"client": ("10.2.0.1", 1)})
        assert other.status_code == 400  # checked (and wrong), not refused
