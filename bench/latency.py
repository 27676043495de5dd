"""Scenario 3, end-to-end latency: produce at steady rates, time until
``GET /v1/events/{id}`` finds each sampled event, beside the processor's own metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from common import wait_ready
from report import RESULTS
from stack import Stack, pct

from audit_events.codec import encode_event
from audit_events.settings import AuditSettings
from audit_events.topics import partition_key
from auditstream.embedded import free_port
from producers.loadgen import generate_events
from query_api.auth import mint_token


async def end_to_end_latency(
    url: str, settings: AuditSettings, token: str, rate: int, seconds: float
) -> dict[str, float]:
    """Produce at ``rate``/s; sample events and time until ``GET /v1/events/{id}`` finds them.

    One tenant, so one partition: the processor stores its events in order, and a
    sampled event being visible means every earlier sample is too. A single watcher
    therefore polls only the oldest pending sample (then the next, at once), so the
    measurement adds ~one request per 20 ms instead of one per sample per poll —
    an earlier version polled every pending sample and itself loaded the API and
    SecantusDB enough to double the latency it reported.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2)
    await producer.start()
    latencies: list[float] = []
    missed = 0
    headers = {"Authorization": f"Bearer {token}"}
    events = list(generate_events(int(rate * seconds), tenants=1, seed=rate))  # new ids per rate
    events = [e.model_copy(update={"tenant": "bench"}) for e in events]
    pending: collections.deque[tuple[str, float]] = collections.deque()
    producing = True

    async def visible(client: httpx.AsyncClient, event_id: str) -> bool:
        try:
            r = await client.get(f"{url}/v1/events/{event_id}", headers=headers)
        except httpx.HTTPError:  # e.g. an idle keep-alive connection closed: retry
            return False
        return r.status_code == 200

    async def watch(client: httpx.AsyncClient) -> None:
        nonlocal missed
        while producing or pending:
            if not pending:
                await asyncio.sleep(0.01)
                continue
            event_id, sent = pending[0]
            if await visible(client, event_id):
                latencies.append(time.perf_counter() - sent)
                pending.popleft()
            elif time.perf_counter() - sent > 30:
                missed += 1
                pending.popleft()
            else:
                await asyncio.sleep(0.02)

    every = max(1, rate // 10)  # ~10 samples/s
    metrics_url = f"http://127.0.0.1:{settings.processor_metrics_port}/metrics"
    async with httpx.AsyncClient(timeout=10) as client:
        # Warm up: the processor must have joined the group and derived its heads,
        # or the first seconds measure its start-up, not the pipeline.
        warm = events.pop(0)
        await producer.send_and_wait(
            settings.topic_events, encode_event(warm), key=partition_key(warm.tenant)
        )
        for _ in range(1200):
            if await visible(client, warm.id):
                break
            await asyncio.sleep(0.1)
        before = await processor_stats(client, metrics_url)
        watcher = asyncio.create_task(watch(client))
        started = time.perf_counter()
        for i, event in enumerate(events):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            await producer.send(
                settings.topic_events, encode_event(event), key=partition_key(event.tenant)
            )
            if i % every == 0:
                pending.append((event.id, sent))
        producing = False
        await watcher
        after = await processor_stats(client, metrics_url)
    await producer.stop()
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = max(delta.get("auditstream_batch_size_count", 0.0), 1.0)
    stored = max(delta.get("auditstream_store_delay_seconds_count", 0.0), 1.0)
    return {
        "rate": rate,
        "samples": len(latencies),
        "not_visible_within_30s": missed,
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,  # nan: none seen in 30 s
        # From the processor's own metrics, over the same interval:
        "mean_batch_events": delta.get("auditstream_batch_size_sum", 0.0) / batches,
        "mean_write_ms": delta.get("auditstream_write_seconds_sum", 0.0) / batches * 1000,
        # first event taken → flush (absent before the caught-up flush: 0)
        "mean_batch_wait_ms": delta.get("auditstream_batch_wait_seconds_sum", 0.0) / batches * 1000,
        "mean_store_delay_ms": delta.get("auditstream_store_delay_seconds_sum", 0.0)
        / stored
        * 1000,
    }


async def processor_stats(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The ``_sum``/``_count`` samples of the processor's histograms, by name."""
    r = await client.get(url)
    stats = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name.endswith(("_sum", "_count")):
            stats[name] = float(value)
    return stats


async def latency_only(args: argparse.Namespace) -> dict[str, Any]:
    """Re-measure only end-to-end latency; the other results come from results.json."""
    results: dict[str, Any] = json.loads((RESULTS / "results.json").read_text())
    stack = Stack(Path(tempfile.mkdtemp(prefix="auditstream-bench-")))
    stack.start()
    try:
        results["end_to_end"] = await latencies(stack, args.rate, args.latency_seconds)
    finally:
        stack.stop()
    return results


async def latencies(stack: Stack, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    """End-to-end latency per rate, on a fresh database with its own processor and API."""
    stack.stop_children()
    s = stack.settings("latency", api_port=free_port(), processor_metrics_port=free_port())
    url = f"http://127.0.0.1:{s.api_port}"
    stack.spawn(s, "processor")
    stack.spawn(s, "api")
    await wait_ready(url)
    token = mint_token(s, subject="bench", tenant="bench", scopes=["events:read"])
    out = []
    for rate in sorted(rates):  # lowest first: a sustainable rate leaves no backlog
        e2e = await end_to_end_latency(url, s, token, rate, seconds)
        out.append({**e2e, "measured": datetime.now(UTC).isoformat(timespec="seconds")})
        print(f"  end to end at {rate}/s: {e2e}", flush=True)
    stack.stop_children()
    return out
