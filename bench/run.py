"""One command, every headline number: ``python bench/run.py`` (or ``make bench``).

Runs on the embedded stack (Tansu, SecantusDB, redis-server started here, on free
ports) and writes ``bench/results/results.json``, ``results.md`` and PNG plots.

Measured side by side in one run:
1. ingestion — the processor's steady-state rate on N pre-produced events, beside
   (a) the store's ceiling (``insert_many``, same documents, same batch size, same
   MongoDB) and (b) the seeds' approach (one ``insert_one`` per event); 1 vs 2
   processor workers;
2. reads at 1/16/64 concurrent clients — cached list, uncached list, get-by-id,
   object history — beside a no-cache baseline that queries MongoDB per request,
   at each ``--store-sizes`` (read latency and insert rate as the store grows);
3. end-to-end latency (produce → visible in ``GET /v1/events/{id}``) at steady
   rates, on a fresh database, with the processor's batch size, write time and
   Kafka → stored delay over the same interval.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from common import wait_ready
from pydantic import SecretStr
from pymongo import AsyncMongoClient, IndexModel
from pymongo.write_concern import WriteConcern

from audit_events.chain import GENESIS, generate_keypair, seal
from audit_events.codec import encode_event, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import CHAIN_INDEX, EVENT_INDEXES, EVENTS_COLLECTION, event_key
from audit_events.topic_admin import ensure_topics
from audit_events.topics import partition_key
from auditstream.embedded import Server, free_port, kafka_server, mongo_server, redis_server
from producers.loadgen import generate_events
from query_api.auth import mint_token

RESULTS = Path(__file__).parent / "results"
SECRET = "bench-secret-0123456789abcdef0123456789"
CHECKPOINT_KEY, _ = generate_keypair()  # processors sign checkpoints, as in production


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stack:
    """Servers for the whole run, plus per-scenario settings and child processes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = [
            kafka_server(workdir),
            mongo_server(workdir),
            redis_server(workdir),
        ]
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def settings(self, name: str, **extra: Any) -> AuditSettings:
        kafka, mongo, redis = (s.url for s in self.servers)
        extra.setdefault("processor_metrics_port", 0)
        return AuditSettings(
            kafka_bootstrap=kafka,
            mongo_uri=mongo,
            redis_url=redis,
            topic_events=f"bench.{name}",
            topic_dlq=f"bench.{name}.dlq",
            topic_checkpoints=f"bench.{name}.ckpt",
            mongo_db=f"bench_{name}",
            processor_group=f"bench-{name}",
            jwt_secret=SecretStr(SECRET),
            kafka_partitions=8,
            data_dir=str(self.workdir / name),
            **extra,
        )

    def spawn(self, settings: AuditSettings, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
        env |= settings_env(settings) | {"AUDITSTREAM_JWT_SECRET": SECRET}
        env["AUDITSTREAM_CHECKPOINT_SIGNING_KEY"] = CHECKPOINT_KEY  # as in production
        log = open(self.workdir / f"{args[0]}-{len(self.children)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "auditstream", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    def stop_children(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.children.clear()

    def stop(self) -> None:
        self.stop_children()
        for server in reversed(self.servers):
            server.stop()


async def produce(settings: AuditSettings, events: list[AuditEvent]) -> float:
    await ensure_topics(settings)  # from the spec, before a produce auto-creates it
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [
            await producer.send(settings.topic_events, encode_event(e), key=partition_key(e.tenant))
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events) / (time.perf_counter() - started)


async def wait_count(settings: AuditSettings, expected: int, timeout: float) -> tuple[float, float]:
    """Seconds from the first stored event to ``expected`` stored; and the time to first.

    Progress is read from the processor group's committed offsets (the processor
    commits only stored batches), not by counting documents: SecantusDB counts by
    scanning the collection, and polling a scan would steal the server time being
    measured (a profile of the first run showed 38% of the server in ``count``).
    One real count confirms the end.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.processor_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    t0 = time.perf_counter()
    first = None
    n = 0
    try:
        await consumer.topics()  # refresh metadata: the topic exists, events were produced
        partitions = consumer.partitions_for_topic(settings.topic_events) or set()
        tps = [TopicPartition(settings.topic_events, p) for p in sorted(partitions)]
        while time.perf_counter() - t0 < timeout:
            n = 0
            for tp in tps:
                offset = await consumer.committed(tp)
                n += offset if offset and offset > 0 else 0
            if n and first is None:
                first = time.perf_counter()
            if n >= expected:
                assert first is not None
                done = time.perf_counter()
                client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
                stored = await client[settings.mongo_db][EVENTS_COLLECTION].count_documents({})
                await client.close()
                if stored < expected:
                    raise AssertionError(f"offsets committed for {n} but {stored} stored")
                return done - first, first - t0
            await asyncio.sleep(0.1)
        raise TimeoutError(f"only {n} of {expected} committed after {timeout}s")
    finally:
        await consumer.stop()


async def fresh_collection(
    client: AsyncMongoClient[dict[str, Any]], settings: AuditSettings, name: str, indexed: bool
) -> Any:
    """A dropped-and-recreated collection; ``indexed``: the processor's exact indexes."""
    coll = client[settings.mongo_db][name].with_options(
        write_concern=WriteConcern(w="majority", j=True)
    )
    await coll.drop()
    if indexed:
        chain_name, chain_keys = CHAIN_INDEX
        await coll.create_indexes(
            [IndexModel(k, name=n) for n, k in EVENT_INDEXES]
            + [IndexModel(chain_keys, name=chain_name, unique=True)]
        )
    return coll


async def store_ceiling(
    settings: AuditSettings, docs: list[dict[str, Any]], batch: int, indexed: bool
) -> float:
    """``insert_many`` of ``docs`` (``batch`` at a time, unordered) into a fresh collection.

    ``indexed``: with exactly the indexes the processor maintains (the fair ceiling);
    otherwise ``_id`` only (the server's raw rate).
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = await fresh_collection(client, settings, "ceiling", indexed)
    sealed = _sealed([dict(d) for d in docs])
    started = time.perf_counter()
    for i in range(0, len(sealed), batch):
        await coll.insert_many(sealed[i : i + batch], ordered=False)
    rate = len(docs) / (time.perf_counter() - started)
    await coll.drop()
    await client.close()
    return rate


def _sealed(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give documents their per-tenant seq and hash, as the processor does."""
    heads: dict[str, tuple[int, str]] = {}
    for doc in docs:
        seq, prev = heads.get(doc["tenant"], (0, GENESIS))
        heads[doc["tenant"]] = (seq + 1, seal(doc, seq + 1, prev))
    return docs


async def per_event_inserts(settings: AuditSettings, docs: list[dict[str, Any]]) -> float:
    """The seeds' approach: one ``insert_one`` per event, same indexes."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri)
    coll = await fresh_collection(client, settings, "per_event", indexed=True)
    sealed = _sealed([dict(d) for d in docs])
    started = time.perf_counter()
    for doc in sealed:
        await coll.insert_one(doc)
    rate = len(docs) / (time.perf_counter() - started)
    await coll.drop()
    await client.close()
    return rate


async def ingestion(
    stack: Stack, name: str, events: list[AuditEvent], workers: int, timeout: float
) -> dict[str, float]:
    settings = stack.settings(name)
    produced_rate = await produce(settings, events)
    for _ in range(workers):
        stack.spawn(settings, "processor")
    seconds, to_first = await wait_count(settings, len(events), timeout)
    stack.stop_children()
    return {
        "events": len(events),
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
        "startup_s": to_first,
        "producer_events_per_s": produced_rate,
    }


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
    # A long timeout: 16 uncached lists queue up in SecantusDB (each sorts in memory),
    # and a client that gave up would leave its query running into the next scenario.
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
            # Uncached lists sort in memory on SecantusDB (seconds each): 16 clients
            # already saturate it, and 64 would leave queries running in the server
            # after the clients time out, polluting the next scenario's numbers.
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


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "servers": "Tansu (Kafka), SecantusDB (MongoDB), redis-server — all on this machine",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


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


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.latency_only:
        return await latency_only(args)
    workdir = Path(tempfile.mkdtemp(prefix="auditstream-bench-"))
    stack = Stack(workdir)
    stack.start()
    results: dict[str, Any] = {"machine": machine(), "config": vars(args)}
    try:
        print(f"generating {args.events} events …", flush=True)
        events = list(generate_events(args.events, tenants=args.tenants, seed=1))
        docs = [event_to_document(e, datetime.now(UTC)) for e in events]
        s = stack.settings("ceiling")
        print("1a. store ceiling (insert_many, batch 1000, same indexes) …", flush=True)
        ceiling = await store_ceiling(s, docs, 1000, indexed=True)
        raw = await store_ceiling(s, docs[: args.per_event * 5], 1000, indexed=False)
        print(f"    {ceiling:.0f} events/s (raw, _id index only: {raw:.0f})", flush=True)
        print(f"1b. per-event insert_one ({args.per_event} events) …", flush=True)
        per_event = await per_event_inserts(s, docs[: args.per_event])
        print(f"    {per_event:.0f} events/s", flush=True)
        del docs
        ingest: dict[str, Any] = {}
        for workers in args.workers:
            print(f"1c. pipeline with {workers} worker(s) …", flush=True)
            ingest[str(workers)] = await ingestion(
                stack, f"ingest{workers}", events, workers, args.timeout
            )
            print(f"    {ingest[str(workers)]['events_per_s']:.0f} events/s", flush=True)
        one = ingest[str(args.workers[0])]["events_per_s"]
        results["ingestion"] = {
            "ceiling_events_per_s": ceiling,
            "raw_insert_many_events_per_s": raw,
            "per_event_insert_events_per_s": per_event,
            "pipeline": ingest,
            "ratio_to_ceiling": one / ceiling,
            "ratio_to_per_event": one / per_event,
        }

        print("2. API reads …", flush=True)
        s = stack.settings("reads", api_port=free_port(), processor_metrics_port=free_port())
        url = f"http://127.0.0.1:{s.api_port}"
        growth: list[dict[str, Any]] = []
        ids: list[str] = []
        stored = 0
        for size in args.store_sizes:
            t = time.perf_counter()
            ids += await seed_store(s, size - stored, seed=size)
            # Ingestion as the store grows: insert_many into the indexed store up to `size`.
            seed_rate = (size - stored) / (time.perf_counter() - t)
            print(f"  store grown to {size}: insert_many at {seed_rate:.0f} events/s", flush=True)
            stored = size
            if not stack.children:
                stack.spawn(s, "processor")
                stack.spawn(s, "api")
                await wait_ready(url)
            token = mint_token(s, subject="bench", tenant="bench", scopes=["events:read"])
            target = ("invoice", "1")
            print(f"  store size {size}", flush=True)
            level = await reads(args.scenario_seconds, url, s, token, ids, target, args.requests)
            growth.append({"store_size": size, "insert_events_per_s": seed_rate, "reads": level})
        results["reads"] = growth
        print("3. end-to-end latency (fresh database) …", flush=True)
        results["end_to_end"] = await latencies(stack, args.rate, args.latency_seconds)
    finally:
        stack.stop()
    return results


def write_reports(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    ing = results["ingestion"]
    lines = [
        "# auditstream benchmark",
        "",
        f"Machine: {results['machine']}",
        "",
        "## Ingestion",
        "",
        "| path | events/s | vs ceiling |",
        "|---|---:|---:|",
        f"| store ceiling (insert_many x1000) | {ing['ceiling_events_per_s']:.0f} | 1.00 |",
        f"| per-event insert_one (seeds) | {ing['per_event_insert_events_per_s']:.0f} | "
        f"{ing['per_event_insert_events_per_s'] / ing['ceiling_events_per_s']:.2f} |",
    ]
    for workers, row in ing["pipeline"].items():
        lines.append(
            f"| auditstream, {workers} worker(s) | {row['events_per_s']:.0f} | "
            f"{row['events_per_s'] / ing['ceiling_events_per_s']:.2f} |"
        )
    lines += [
        "",
        f"Pipeline vs per-event approach: x{ing['ratio_to_per_event']:.1f}.",
        "",
        "End-to-end (produce → visible via GET /v1/events/{id}), steady rate:",
        "",
        "| events/s offered | samples | not visible in 30 s | p50 ms | p99 ms | max ms "
        "| mean batch | mean write ms | mean Kafka → stored ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {e['rate']} | {e['samples']} | {e.get('not_visible_within_30s', 0)} | "
        f"{e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['max_ms']:.0f} | "
        f"{e.get('mean_batch_events', float('nan')):.0f} | "
        f"{e.get('mean_write_ms', float('nan')):.0f} | "
        f"{e.get('mean_store_delay_ms', float('nan')):.0f} |"
        for e in results["end_to_end"]
    ]
    lines += [
        "",
        "## Reads",
        "",
    ]
    for level in results["reads"]:
        lines += [
            f"Store size {level['store_size']} (insert_many while growing to it: "
            f"{level['insert_events_per_s']:.0f} events/s):",
            "",
            "| scenario | clients | req/s | p50 ms | p99 ms | cache hit | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['scenario']} | {r['concurrency']} | {r['req_per_s']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['hit_ratio']:.2f} | {r['errors']} |"
            for r in level["reads"]
        ]
        lines.append("")
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    plot(results)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ing = results["ingestion"]
    names = ["ceiling", "per-event"] + [f"pipeline x{w}" for w in ing["pipeline"]]
    values = [ing["ceiling_events_per_s"], ing["per_event_insert_events_per_s"]] + [
        r["events_per_s"] for r in ing["pipeline"].values()
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, values, color=["#555", "#bbb"] + ["#2a7"] * len(ing["pipeline"]))
    ax.set_ylabel("events/s")
    ax.set_title("Ingestion into MongoDB (same documents, same server)")
    fig.tight_layout()
    fig.savefig(RESULTS / "ingestion.png", dpi=110)
    plt.close(fig)

    e2e = results["end_to_end"]
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [e["rate"] for e in e2e]
    ax.plot(rates, [e["p50_ms"] for e in e2e], marker="o", label="p50")
    ax.plot(rates, [e["p99_ms"] for e in e2e], marker="o", label="p99")
    ax.plot(
        rates,
        [e.get("mean_write_ms", float("nan")) for e in e2e],
        ls="--",
        label="mean batch write",
    )
    ax.axhline(1000, color="#c33", lw=0.8, label="target p99 1 s")
    ax.axvline(ing["ceiling_events_per_s"], color="#555", lw=0.8, ls=":", label="store ceiling")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events/s offered (one tenant)")
    ax.set_ylabel("produce → visible (ms)")
    ax.set_title("End-to-end latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "latency.png", dpi=110)
    plt.close(fig)

    last = results["reads"][-1]["reads"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for scenario in sorted({r["scenario"] for r in last}):
        rows = [r for r in last if r["scenario"] == scenario]
        ax.plot(
            [r["concurrency"] for r in rows],
            [r["p50_ms"] for r in rows],
            marker="o",
            label=scenario,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Reads, store of {results['reads'][-1]['store_size']} events")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "reads.png", dpi=110)
    plt.close(fig)

    if len(results["reads"]) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for scenario in ("cached list", "uncached list", "get by id"):
            xs, ys = [], []
            for level in results["reads"]:
                row = next(
                    (
                        r
                        for r in level["reads"]
                        if r["scenario"] == scenario and r["concurrency"] == 16
                    ),
                    None,
                )
                if row:
                    xs.append(level["store_size"])
                    ys.append(row["p50_ms"])
            ax.plot(xs, ys, marker="o", label=scenario)
        ax.set_yscale("log")
        ax.set_xlabel("events in store")
        ax.set_ylabel("p50 ms at 16 clients")
        ax.set_title("Read latency as the store grows")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "growth.png", dpi=110)
        plt.close(fig)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000, help="events ingested (default 200k)")
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument(
        "--per-event",
        type=int,
        default=20_000,
        help="events for the insert_one baseline (its rate is steady; default 20k)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--store-sizes", type=int, nargs="+", default=[20_000, 100_000])
    p.add_argument("--requests", type=int, default=2000, help="requests per read scenario/level")
    p.add_argument(
        "--scenario-seconds",
        type=float,
        default=20.0,
        help="cap per read scenario and concurrency level (uncached reads are slow on SecantusDB)",
    )
    p.add_argument(
        "--rate",
        type=int,
        nargs="+",
        default=[50, 100, 250, 500, 1000],
        help="events/s for the latency test, one tenant (one run per rate; SecantusDB stores "
        "~250-500/s here, so 500 and 1000 build a backlog)",
    )
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument(
        "--latency-only",
        action="store_true",
        help="re-measure end-to-end latency on a fresh stack; merge into results.json",
    )
    p.add_argument("--timeout", type=float, default=900.0)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    outcome = asyncio.run(main(arguments))
    write_reports(outcome)
    print((RESULTS / "results.md").read_text())
