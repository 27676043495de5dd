"""Scenario 2, reads: cached and uncached lists, get-by-id and object history at 1/16/64
clients, beside a baseline that queries MongoDB per request, as the store grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from stack import pct

from audit_events.chain import GENESIS, seal
from audit_events.codec import event_to_document
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION, event_key
from producers.loadgen import generate_events


async def load(
    concurrency: int,
    total: int,
    request: Callable[[int], Awaitable[str]],
    max_seconds: float,
) -> dict[str, float]:
    """``total`` requests from ``concurrency`` clients, stopping early after ``max_seconds``."""
    latencies: list[float] = []
    states: dict[str, int] = {}
    counter = iter(range(total))
    started = time.perf_counter()

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() - started > max_seconds:
                return
            t = time.perf_counter()
            try:
                state = await request(i)
            except httpx.HTTPError:  # e.g. a timeout when the server is saturated
                state = "error"
            latencies.append(time.perf_counter() - t)
            states[state] = states.get(state, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    done = len(latencies)
    return {
        "concurrency": concurrency,
        "requests": done,
        "req_per_s": done / elapsed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "hit_ratio": states.get("hit", 0) / max(done, 1),
        "errors": states.get("error", 0),
    }


async def drain(probe: Callable[[], Awaitable[Any]], budget: float = 180.0) -> None:
    """Wait until a cheap request answers fast again (the server's backlog is gone)."""
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await probe()
            if time.perf_counter() - t < 0.2:
                return
        await asyncio.sleep(1.0)


async def reads(
    max_seconds: float,
    url: str,
    settings: AuditSettings,
    token: str,
    ids: list[str],
    target: tuple[str, str],
    per_level: int,
) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    base = datetime(2030, 1, 1, tzinfo=UTC)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, maxPoolSize=64)
    coll = mongo[settings.mongo_db][EVENTS_COLLECTION]
    out: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    # A long timeout: 16 baseline lists queue up in SecantusDB (each sorts the tenant in
    # memory), and a client that gave up would leave its query running into the next
    # scenario.
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=1800
    ) as client:

        async def get(path: str, params: dict[str, Any] | None = None) -> str:
            r = await client.get(path, params=params)
            r.raise_for_status()
            return str(r.headers.get("X-Cache", "none"))

        history_ok = (
            await client.get(f"/v1/targets/{target[0]}/{target[1]}/history")
        ).status_code == 200
        scenarios: dict[str, Callable[[int], Awaitable[str]]] = {
            "cached list": lambda i: get("/v1/events", {"limit": 50}),
            "get by id": lambda i: get(f"/v1/events/{ids[i % len(ids)]}"),
        }
        if history_ok:
            scenarios["object history"] = lambda i: get(
                f"/v1/targets/{target[0]}/{target[1]}/history", {"limit": 50}
            )
        # The slow ones last: a query still running in the server cannot slow the others.
        scenarios["uncached list"] = lambda i: get(
            "/v1/events",
            {
                "limit": 50,
                "until": (base + timedelta(milliseconds=random.randrange(10**9))).isoformat(),
            },
        )
        scenarios["baseline list (MongoDB per request)"] = lambda i: _mongo_list(coll)
        for name, fn in scenarios.items():
            # The baseline sorts in memory on SecantusDB (seconds each): 16 clients
            # already saturate it, and 64 would leave queries running in the server
            # after the clients time out, polluting the next scenario's numbers. The
            # uncached list keeps the same levels, so the two rows compare.
            levels = (1, 16) if name.startswith(("uncached", "baseline")) else (1, 16, 64)
            for concurrency in levels:
                with contextlib.suppress(httpx.HTTPError):
                    await fn(0)  # warm
                result = await load(concurrency, per_level, fn, max_seconds)
                out.append({"scenario": name, **result})
                if result["errors"]:  # timed-out queries still run in the server: let them end
                    await drain(lambda: coll.find_one({"_id": event_key("bench", ids[0])}))
                print(
                    f"  {name:38s} c={concurrency:<3d} {result['req_per_s']:8.0f} req/s "
                    f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms "
                    f"hit {result['hit_ratio']:.2f} errors {result['errors']}",
                    flush=True,
                )
    await mongo.close()
    return out


async def _mongo_list(coll: Any) -> str:
    await (
        coll.find({"tenant": "bench"}).sort([("occurred_at", -1), ("_id", -1)]).limit(50).to_list()
    )
    return "none"


async def seed_store(settings: AuditSettings, count: int, seed: int) -> list[str]:
    """Insert ``count`` generated events straight into the store (tenant ``bench``)."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = client[settings.mongo_db][EVENTS_COLLECTION]
    now = datetime.now(UTC)
    head = await coll.find_one({"tenant": "bench"}, sort=[("seq", -1)])
    heads = {"bench": (head["seq"], head["hash"]) if head else (0, GENESIS)}
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    for event in generate_events(count, tenants=1, seed=seed):
        event = event.model_copy(update={"tenant": "bench"})
        doc = event_to_document(event, now)
        seq, prev = heads["bench"]
        heads["bench"] = (seq + 1, seal(doc, seq + 1, prev))
        batch.append(doc)
        ids.append(event.id)
        if len(batch) == 1000:
            await coll.insert_many(batch, ordered=False)
            batch = []
    if batch:
        await coll.insert_many(batch, ordered=False)
    await client.close()
    return ids
