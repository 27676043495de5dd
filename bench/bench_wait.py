"""``POST /v1/events?wait=true`` against the 202 path, same run, 1 and 16 clients.

    .venv/bin/python bench/bench_wait.py [--seconds 10] [--clients 1,16]
        [--batch-max-ms MS] [--fetch-wait-ms MS] [--out FILE]

Starts Tansu, SecantusDB and redis-server (temporary data dir), one processor
worker and the API as separate processes, warms the consumer group, then for
each client count posts single events for ``--seconds``: first plain (202,
published), then ``?wait=true`` (201 once stored; a 202 there counts as a
failed wait). Prints events/s, p50, p99 and the wait/202 ratio per client count
(the issue's target: >= 0.8x, p50 <= batch interval + 100 ms), and writes
bench/results/wait.json (or ``--out``). Each ``wait=true`` row also carries the
processor's own metrics over the same interval (where a waited event's time
goes): mean batch size, mean batch wait (first event taken → flush), mean write
time and mean store delay (Kafka timestamp → batch stored). The machine is
shared: compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from common import child_env, spawn, stack_settings, wait_ready

from audit_events.topic_admin import ensure_topics
from auditstream.embedded import free_port, kafka_server, mongo_server, redis_server, stop_all
from query_api.auth import mint_token

SECRET = "bench-wait-secret-0123456789abcdef0123"
TENANT = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def scenario(
    client: httpx.AsyncClient, wait: bool, clients: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    status: Counter[int] = Counter()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds
    tag = "w" if wait else "p"

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            body = {"id": f"{tag}{clients}-{n}", "tenant": TENANT, "action": "user.login"}
            start = time.perf_counter()
            resp = await client.post("/v1/events" + ("?wait=true" if wait else ""), json=body)
            latencies.append(time.perf_counter() - start)
            status[resp.status_code] += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    return {
        "path": "wait=true" if wait else "202",
        "clients": clients,
        "events_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(latencies, 0.5) * 1000, 1),
        "p99_ms": round(pct(latencies, 0.99) * 1000, 1),
        "status": dict(status),
    }


async def processor_stats(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The ``_sum``/``_count`` samples of the processor's histograms, by name."""
    text = (await client.get(url)).text
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")):
            stats[name] = float(value)
    return stats


def per_batch(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Means over the interval between two :func:`processor_stats` samples."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    def mean(name: str, scale: float = 1000.0) -> float:
        count = d.get(f"{name}_count", 0.0)
        return round(d.get(f"{name}_sum", 0.0) / count * scale, 1) if count else float("nan")

    return {
        "batches": d.get("auditstream_batch_size_count", 0.0),
        "mean_batch_events": mean("auditstream_batch_size", 1.0),
        "mean_batch_wait_ms": mean("auditstream_batch_wait_seconds"),
        "mean_write_ms": mean("auditstream_write_seconds"),
        "mean_store_delay_ms": mean("auditstream_store_delay_seconds"),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-wait-"))
    servers = [kafka_server(workdir), mongo_server(workdir), redis_server(workdir)]
    children: list[subprocess.Popen[bytes]] = []
    try:
        for server in servers:
            server.start()
        settings = stack_settings(workdir, servers, SECRET).model_copy(
            update={
                "processor_metrics_port": free_port(),
                **({"batch_max_ms": args.batch_max_ms} if args.batch_max_ms else {}),
                **({"kafka_fetch_max_wait_ms": args.fetch_wait_ms} if args.fetch_wait_ms else {}),
            }
        )
        metrics_url = f"http://127.0.0.1:{settings.processor_metrics_port}/metrics"
        port = settings.api_port
        await ensure_topics(settings)
        # no signing key in the bench
        env = child_env(settings, SECRET, AUDITSTREAM_ALLOW_UNSIGNED_CHAINS="true")
        children.append(spawn(env, workdir / "processor.log", "processor"))
        children.append(spawn(env, workdir / "api.log", "api"))
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        token = mint_token(settings, subject="bench", tenant=TENANT, scopes=["events:write"])
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60, limits=limits
        ) as client:
            for n in range(60):  # until the processor's group formed and stores
                body = {"id": f"warm-{n}", "tenant": TENANT, "action": "user.login"}
                if (await client.post("/v1/events?wait=true", json=body)).status_code == 201:
                    break
            else:
                raise SystemExit(f"the processor stores nothing: see {workdir}/processor.log")
            rows = []
            for clients in args.clients:
                plain = await scenario(client, False, clients, args.seconds)
                before = await processor_stats(client, metrics_url)
                waited = await scenario(client, True, clients, args.seconds)
                waited["processor"] = per_batch(before, await processor_stats(client, metrics_url))
                waited["vs_202"] = round(waited["events_per_s"] / plain["events_per_s"], 2)
                rows += [plain, waited]
                print(json.dumps(plain), json.dumps(waited), sep="\n", flush=True)
        return {
            "batch_max_ms": settings.batch_max_ms,
            "kafka_fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
            "cpu_count": os.cpu_count(),
            "rows": rows,
        }
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        stop_all(servers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--batch-max-ms", type=int, help="the processor's BATCH_MAX_MS")
    parser.add_argument("--fetch-wait-ms", type=int, help="the processor's KAFKA_FETCH_MAX_WAIT_MS")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wait.json")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    report = asyncio.run(run(args))
    out = args.out
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
