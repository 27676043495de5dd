"""Added latency of read auditing on cached reads (issue 17, "Measure"; target < 5 %).

    .venv/bin/python bench/bench_read_audit.py [--requests 3000] [--limit 50] [--clients 1,8]

One run, one stack (the embedded Tansu/SecantusDB/Redis of bench/stack.py), one
processor worker, and two API processes over the same topic, database and cache:
``AUDITSTREAM_READ_AUDIT=true`` and ``=false``. After seeding and warming the
cache, the same cached page (``GET /v1/events?limit=N``, ``X-Cache: hit``) is
requested from both, in interleaved blocks (off, on, on, off, ...) so drift on
the shared machine falls on both alike. With auditing on, every request
publishes a read event that the processor stores while the bench runs (that
work is part of what is measured). Prints p50 / mean / p90 per side, the ratios
on/off, the misses seen (a stored read event must not invalidate the page) and
the read events stored; writes bench/results/read_audit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import wait_ready, write_results
from stack import SECRET, Stack, pct

from audit_events.chain import generate_keypair
from audit_events.storage import EVENTS_COLLECTION
from auditstream.devstack import service_env, spawn_service, stop_services
from auditstream.embedded import free_port
from query_api.auth import mint_token

TENANT = "bench"
BLOCK = 50


def body(i: int) -> dict[str, Any]:
    return {
        "id": f"evt-{i:07d}",
        "tenant": TENANT,
        "action": ("invoice.update", "invoice.create", "user.login")[i % 3],
        "actor": {"id": f"user-{i % 50}", "type": "user"},
        "targets": [{"type": "invoice", "id": str(i % 100)}],
        "description": f"benchmark event number {i}",
        "metadata": {"n": i, "plan": "pro"},
    }


async def count(mongo: AsyncMongoClient[dict[str, Any]], db: str, where: dict[str, Any]) -> int:
    return await mongo[db][EVENTS_COLLECTION].count_documents({"tenant": TENANT, **where})


async def timed_block(
    client: httpx.AsyncClient, url: str, n: int, clients: int, misses: list[int]
) -> list[float]:
    times: list[float] = []
    per = max(1, n // clients)

    async def worker() -> None:
        for _ in range(per):
            start = time.perf_counter()
            resp = await client.get(url)
            times.append(time.perf_counter() - start)
            if resp.status_code != 200:
                raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:200]}")
            if resp.headers.get("X-Cache") != "hit":
                misses.append(1)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return times


def summary(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(times, 0.5) * 1000, 3),
        "mean_ms": round(statistics.fmean(times) * 1000, 3),
        "p90_ms": round(pct(times, 0.9) * 1000, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-read-audit-"))
    stack = Stack(workdir)
    private, public = generate_keypair()
    keys = {"control_signing_key": SecretStr(private), "control_public_keys": [public]}
    try:
        stack.start()
        base = stack.settings("readaudit", **keys)
        # --aa: both APIs off (an A/A run: the noise of the machine, ratio ~1)
        on = base.model_copy(update={"read_audit": not args.aa, "api_port": free_port()})
        off = base.model_copy(update={"read_audit": False, "api_port": free_port()})
        processor = stack.spawn(base, "processor")
        for settings in (on, off):  # the API's control key is a secret: passed explicitly
            env = service_env(
                settings,
                AUDITSTREAM_JWT_SECRET=SECRET,
                AUDITSTREAM_CONTROL_SIGNING_KEY=private,
            )
            log = workdir / f"api-{settings.api_port}.log"
            stack.children.append(spawn_service(env, log, "api"))
        urls = {name: f"http://127.0.0.1:{s.api_port}" for name, s in (("on", on), ("off", off))}
        for url in urls.values():
            await wait_ready(url)
        token = mint_token(
            base, subject="bench", tenant=TENANT, scopes=["events:read", "events:write"]
        )
        headers = {"Authorization": f"Bearer {token}"}
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(base.mongo_uri)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with (
            httpx.AsyncClient(base_url=urls["on"], headers=headers, limits=limits) as c_on,
            httpx.AsyncClient(base_url=urls["off"], headers=headers, limits=limits) as c_off,
        ):
            for start in range(0, args.events, 500):
                batch = [body(i) for i in range(start, min(args.events, start + 500))]
                resp = await c_off.post("/v1/events", json={"events": batch}, timeout=60)
                assert resp.status_code == 202, resp.text
            deadline = time.monotonic() + 180
            while await count(mongo, base.mongo_db, {"id": {"$regex": "^evt-"}}) < args.events:
                if time.monotonic() > deadline:
                    raise TimeoutError("seed events not stored")
                await asyncio.sleep(0.5)
            if args.no_processor:  # read events then only reach Kafka
                stop_services([processor])
                stack.children.remove(processor)
            url = f"/v1/events?limit={args.limit}"
            for client in (c_off, c_on):  # warm: the page is cached, connections open
                for _ in range(50):
                    assert (await client.get(url)).status_code == 200
            reads_before = await count(mongo, base.mongo_db, {"action": "auditstream.log.viewed"})
            results = []
            for clients in args.clients:
                times: dict[str, list[float]] = {"on": [], "off": []}
                misses: dict[str, list[int]] = {"on": [], "off": []}
                blocks = max(2, args.requests // BLOCK)
                t0 = time.perf_counter()
                for b in range(blocks):
                    order = ("off", "on") if b % 2 == 0 else ("on", "off")
                    for name in order:
                        client = c_on if name == "on" else c_off
                        times[name] += await timed_block(client, url, BLOCK, clients, misses[name])
                wall = time.perf_counter() - t0
                s_on, s_off = summary(times["on"]), summary(times["off"])
                results.append(
                    {
                        "clients": clients,
                        "requests_per_side": len(times["on"]),
                        "on": s_on,
                        "off": s_off,
                        "ratio_p50": round(s_on["p50_ms"] / s_off["p50_ms"], 3),
                        "ratio_mean": round(s_on["mean_ms"] / s_off["mean_ms"], 3),
                        "misses_on": len(misses["on"]),
                        "misses_off": len(misses["off"]),
                        "seconds": round(wall, 1),
                    }
                )
            sent = sum(r["requests_per_side"] for r in results) + 50
            deadline = time.monotonic() + (0 if args.no_processor else 120)
            stored = 0
            while time.monotonic() < deadline:
                stored = (
                    await count(mongo, base.mongo_db, {"action": "auditstream.log.viewed"})
                    - reads_before
                )
                if stored >= sent:
                    break
                await asyncio.sleep(1)
        await mongo.close()
        return {
            "events": args.events,
            "limit": args.limit,
            "cpu_count": os.cpu_count(),
            "results": results,
            "processor": not args.no_processor,
            "aa": args.aa,
            "read_events_expected": sent,
            "read_events_stored": stored,
        }
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument(
        "--no-processor",
        action="store_true",
        help="seed, then stop the processor: read events are published but not stored",
    )
    parser.add_argument("--aa", action="store_true", help="A/A run: auditing off on both")
    parser.add_argument("--requests", type=int, default=3000, help="per side and setting")
    parser.add_argument("--clients", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8])
    args = parser.parse_args()
    results = asyncio.run(run(args))
    write_results("read_audit.json", results)
    for row in results["results"]:
        print(
            f"clients={row['clients']}: cached list p50 on/off = {row['on']['p50_ms']}/"
            f"{row['off']['p50_ms']} ms, ratio p50 {row['ratio_p50']}, mean {row['ratio_mean']}"
            f" (misses on={row['misses_on']} off={row['misses_off']})"
        )


if __name__ == "__main__":
    main()
