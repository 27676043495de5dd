"""Export of N events over a real socket: duration, size and the server's peak memory.

    .venv/bin/python bench/bench_export.py [--events 100000] [--formats csv,ndjson]

1. Starts Tansu, SecantusDB and redis-server on free ports (temporary data dir).
2. Serves the API with Hypercorn in this process (it creates the indexes), then
   inserts ``--events`` documents for one tenant directly into MongoDB as the
   processor stores them (``event_to_document``, ``seq`` 1..n, the chain index;
   5,000 per ``insert_many``), with realistic fields.
3. Streams
   ``GET /v1/events/export?format=…`` with httpx, counting bytes and lines.
4. Memory, two ways, both over the export alone:
   - ``tracemalloc`` peak of Python allocations above the level before the export
     (started after the inserts; ``reset_peak`` before each export);
   - resident set size, sampled every 20 ms from ``/proc/self/status``: peak minus
     the RSS just before the export.
   For scale, the body itself (the bytes a buffered response would hold) is printed.

Prints one JSON object; not a test (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from common import wait_ready
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pydantic import SecretStr
from pymongo import AsyncMongoClient

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from audit_events.store_adapter import ensure_chain_index
from auditstream.embedded import free_port, kafka_server, mongo_server, redis_server, stop_all
from query_api.app import create_app
from query_api.auth import mint_token

TENANT = "bench-export"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(i: int) -> dict[str, Any]:
    return {
        "id": f"exp-{i:08d}",
        "tenant": TENANT,
        "action": ("invoice.update", "user.login", "document.share")[i % 3],
        "crud": "u",
        "occurred_at": (T0 + timedelta(milliseconds=37 * i)).isoformat(),
        "actor": {"id": f"user-{i % 97}", "type": "user", "name": f"User {i % 97}"},
        "targets": [{"type": "invoice", "id": f"inv-{i % 1000}", "name": "Invoice"}],
        "changes": {"total": {"old": i, "new": i + 1}, "status": {"old": "draft", "new": "sent"}},
        "context": {"ip": "10.0.0.1", "user_agent": "Mozilla/5.0", "request_id": f"req-{i}"},
        "source": {"service": "billing", "component": "api", "version": "1.4.2"},
        "description": f"invoice total updated to {i + 1} (=formula-looking text stays safe)",
        "metadata": {"plan": "pro", "seats": i % 50, "tags": ["a", "b"]},
    }


async def insert(settings: AuditSettings, n: int) -> float:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = client[settings.mongo_db][EVENTS_COLLECTION]
    # As the processor stores them: the chain index and seq 1..n (what the export's
    # windows sample on SecantusDB).
    await ensure_chain_index(coll)
    received = datetime.now(UTC)
    started = time.perf_counter()
    for start in range(0, n, 5000):
        docs = [
            {**event_to_document(AuditEvent.model_validate(event(i)), received), "seq": i + 1}
            for i in range(start, min(n, start + 5000))
        ]
        await coll.insert_many(docs, ordered=False)
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def export(url: str, token: str, fmt: str) -> dict[str, Any]:
    peak_rss = base_rss = rss_kib()
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak_rss
        while not done.is_set():
            peak_rss = max(peak_rss, rss_kib())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    base_traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    size = lines = 0
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(timeout=None) as http,
        http.stream(
            "GET",
            f"{url}/v1/events/export",
            params={"format": fmt},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        resp.raise_for_status()
        async for chunk in resp.aiter_raw():
            size += len(chunk)
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    say(f"{fmt}: {size} bytes in {elapsed:.1f} s")
    _, peak_traced = tracemalloc.get_traced_memory()
    done.set()
    await sampler
    return {
        "format": fmt,
        "rows": lines - (1 if fmt == "csv" else 0),
        "bytes": size,
        "body_mib": round(size / 2**20, 1),
        "seconds": round(elapsed, 2),
        "rows_per_second": round((lines - 1) / elapsed),
        "tracemalloc_peak_mib": round((peak_traced - base_traced) / 2**20, 2),
        "rss_peak_delta_mib": round((peak_rss - base_rss) / 1024, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    servers = [kafka_server(workdir), mongo_server(workdir), redis_server(workdir)]
    for server in servers:
        server.start()
    try:
        settings = AuditSettings(
            kafka_bootstrap=servers[0].url,
            mongo_uri=servers[1].url,
            redis_url=servers[2].url,
            mongo_db="bench_export",
            jwt_secret=SecretStr("bench-export-secret-0123456789abcdef"),
            data_dir=str(workdir / "data"),
        )
        # The API first: it creates the indexes, as in production, before the data.
        app = create_app(settings)
        config = Config()
        port = free_port()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url)
        say(f"API ready; inserting {args.events} events …")
        insert_seconds = await insert(settings, args.events)
        say(f"inserted in {insert_seconds:.1f} s; exporting")
        token = mint_token(settings, subject="bench", tenant=TENANT, scopes=["events:read"])
        tracemalloc.start()
        try:
            results = [await export(url, token, fmt) for fmt in args.formats.split(",")]
        finally:
            tracemalloc.stop()
            stop.set()
            await server
        return {
            "events": args.events,
            "insert_seconds": round(insert_seconds, 1),
            "exports": results,
        }
    finally:
        stop_all(servers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,ndjson")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
