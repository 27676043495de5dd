"""A cached hit costs one Redis command (issue 18): the generations and the value
are read by one script, not MGET then GET."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from audit_events.settings import AuditSettings
from tests.integration import test_api_support as support
from tests.integration.test_api_support import Store, bearer, make_event

pytestmark = pytest.mark.integration
http, live, db = support.http, support.live, support.db  # fixtures


async def calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_a_hit_is_one_redis_command(
    http: httpx.AsyncClient, db: Store, settings: AuditSettings
) -> None:
    await db.put([make_event(n) for n in range(5)])
    auth = bearer(settings)
    first = await http.get("/v1/events?limit=3", headers=auth)
    assert first.headers["X-Cache"] == "miss"
    redis = Redis.from_url(settings.redis_url or "")
    try:
        before = await calls(redis)
        for _ in range(10):
            hit = await http.get("/v1/events?limit=3", headers=auth)
            assert hit.headers["X-Cache"] == "hit" and hit.content == first.content
        after = await calls(redis)
    finally:
        await redis.aclose()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    spent.pop("info", None)
    # One EVALSHA per hit; commandstats also counts the MGET and GET the script
    # runs inside Redis, but no hit sends them as commands of their own.
    assert spent.get("evalsha", 0) >= 10, spent
    assert spent.get("get", 0) <= spent["evalsha"] and spent.get("mget", 0) <= spent["evalsha"]
