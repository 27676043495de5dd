"""Read-path benchmark of the query API on the embedded stack.

    .venv/bin/python bench/bench_api.py [--events 2000] [--clients 16] [--seconds 10]

1. Starts Tansu, SecantusDB and redis-server on free ports (temporary data dir).
2. Inserts ``--events`` events for one tenant directly into MongoDB
   (``event_to_document``), as the processor would store them.
3. Runs ``auditstream api`` (Hypercorn) as a separate process, so the load
   generator and the server do not share one event loop.
4. For each scenario, ``--clients`` concurrent httpx clients issue requests for
   ``--seconds``; every response must be 200 and carry the expected ``X-Cache``:
   - cached list: ``GET /v1/events?limit=100`` (warmed once: every request a hit);
   - uncached list: the same page, but each request has a distinct ``until`` far
     in the future, so its cache key is new (same result set, always a miss);
   - get-by-id: ``GET /v1/events/{id}`` for random stored ids (misses, then hits).

Prints requests/s, p50 and p99 per scenario as JSON and a Markdown table.
Not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from common import child_env, spawn, stack_settings, wait_ready
from pymongo import AsyncMongoClient

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import kafka_server, mongo_server, redis_server, stop_all
from query_api.auth import mint_token

TENANT = "bench"
SECRET = "bench-api-secret-0123456789abcdef0123"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(i: int) -> AuditEvent:
    return AuditEvent.model_validate(
        {
            "id": f"evt-{i:07d}",
            "tenant": TENANT,
            "action": ("invoice.update", "invoice.create", "user.login", "report.export")[i % 4],
            "crud": ("u", "c", "r", "r")[i % 4],
            "occurred_at": T0 + timedelta(seconds=i),
            "actor": {"id": f"user-{i % 50}", "type": "user", "name": f"User {i % 50}"},
            "targets": [{"type": "invoice", "id": str(i % 500), "name": f"Invoice {i % 500}"}],
            "description": f"benchmark event number {i}",
            "changes": {"total": {"old": i, "new": i + 1}},
            "context": {"ip": "10.0.0.1", "request_id": f"req-{i}"},
            "source": {"service": "billing", "version": "1.0"},
            "metadata": {"plan": "pro", "seats": i % 100},
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scenario(
    client: httpx.AsyncClient,
    name: str,
    path: Callable[[int], str],
    clients: int,
    seconds: float,
    expect_cache: set[str],
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` httpx clients GET ``path(i)`` for ``seconds``; with ``server_pid``
    also the server's CPU ms per request (the process and its children)."""
    latencies: list[float] = []
    cache: Counter[str] = Counter()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            url = path(next(counter))
            start = time.perf_counter()
            resp = await client.get(url)
            latencies.append(time.perf_counter() - start)
            if resp.status_code != 200:
                raise RuntimeError(f"{name}: {url} answered {resp.status_code}: {resp.text}")
            cache[resp.headers.get("X-Cache", "-")] += 1

    cpu0 = cpu_seconds(server_pid) if server_pid else 0.0
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(server_pid) - cpu0 if server_pid else None
    unexpected = set(cache) - expect_cache
    if unexpected:
        raise RuntimeError(f"{name}: unexpected X-Cache values {dict(cache)}")
    return {
        "scenario": name,
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(latencies, 0.50) * 1000, 2),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 2),
        "x_cache": dict(cache),
        **({"server_cpu_ms_per_request": round(cpu * 1000 / len(latencies), 3)} if cpu else {}),
    }


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (API workers, Hypercorn's)."""
    total = 0.0
    pids = [pid] + [int(e) for e in os.listdir("/proc") if e.isdigit() and _ppid(int(e)) == pid]
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


async def seed(settings: AuditSettings, count: int) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = client[settings.mongo_db][EVENTS_COLLECTION]
    now = datetime.now(UTC)
    for start in range(0, count, 1000):
        docs = [event_to_document(event(i), now) for i in range(start, min(count, start + 1000))]
        await coll.insert_many(docs)
    await client.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    servers = [kafka_server(workdir), mongo_server(workdir), redis_server(workdir)]
    api: subprocess.Popen[bytes] | None = None
    try:
        for server in servers:
            server.start()
        settings = stack_settings(workdir, servers, SECRET)
        port = settings.api_port
        t = time.perf_counter()
        await seed(settings, args.events)
        seed_seconds = time.perf_counter() - t
        env = child_env(settings, SECRET)
        api = spawn(env, workdir / "api.log", "api")
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        token = mint_token(settings, subject="bench", tenant=TENANT, scopes=["events:read"])
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        rng = random.Random(1)
        async with httpx.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
            limits=limits,
        ) as client:
            warm = await client.get(f"/v1/events?limit={args.limit}")
            assert warm.status_code == 200 and len(warm.json()["data"]) == min(
                args.limit, args.events
            )
            results = [
                await scenario(
                    client,
                    "cached list",
                    lambda i: f"/v1/events?limit={args.limit}",
                    args.clients,
                    args.seconds,
                    {"hit"},
                    api.pid,
                ),
                await scenario(
                    client,
                    "uncached list",
                    lambda i: f"/v1/events?limit={args.limit}&until=2100-01-01T00:00:00.{i:06d}Z",
                    args.clients,
                    args.seconds,
                    {"miss"},
                    api.pid,
                ),
                await scenario(
                    client,
                    "get-by-id",
                    lambda i: f"/v1/events/evt-{rng.randrange(args.events):07d}",
                    args.clients,
                    args.seconds,
                    {"hit", "miss"},
                    api.pid,
                ),
            ]
        cached, uncached = results[0], results[1]
        return {
            "events": args.events,
            "clients": args.clients,
            "seconds_per_scenario": args.seconds,
            "seed_seconds": round(seed_seconds, 1),
            "cpu_count": os.cpu_count(),
            "results": results,
            "cached_vs_uncached_p50": round(uncached["p50_ms"] / cached["p50_ms"], 1),
        }
    finally:
        if api is not None:
            stop_api(api)
        stop_all(servers)


def stop_api(api: subprocess.Popen[bytes]) -> None:
    api.terminate()
    try:
        api.wait(15)
    except subprocess.TimeoutExpired:
        api.kill()
        api.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=100, help="page size of the list scenarios")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    print("\n| scenario | requests | req/s | p50 ms | p99 ms | X-Cache |")
    print("|---|---|---|---|---|---|")
    for r in report["results"]:
        print(
            f"| {r['scenario']} | {r['requests']} | {r['rps']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['x_cache']} |"
        )
    print(f"\ncached list is {report['cached_vs_uncached_p50']}x faster than uncached at p50")


if __name__ == "__main__":
    main()
