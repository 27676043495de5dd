"""``POST /v1/events?wait=true`` against the 202 path, same run, 1 and 16 clients.

    .venv/bin/python bench/bench_wait.py [--seconds 10] [--rounds 4] [--clients 1,16]
        [--batch-max-ms MS] [--fetch-wait-ms MS] [--fetch-active-wait-ms MS] [--out FILE]

Starts Tansu, SecantusDB and redis-server (temporary data dir), one processor
worker and the API as separate processes, warms the consumer group, then for
each client count posts single events for ``--seconds`` per path, cut into
``--rounds`` interleaved slices (202, wait, wait, 202, 202, ...: a shared
machine's load changes during a run, and each path sees the same share of it;
each 202 slice is followed by a wait until the processor stored its events,
so the next slice starts without a backlog, and each wait slice by
``FetchWait.idle_after`` + 1 s idle, so the 202 slice runs with the worker's long
fetch wait as plain traffic alone would):
plain (202, published) and ``?wait=true`` (201 once stored; a 202 there counts
as a failed wait). Prints events/s, p50, p99 and the wait/202 ratio per client
count (the issue's target: >= 0.8x, p50 <= batch interval + 100 ms; the ratio
of every round too), and writes bench/results/wait.json (or ``--out``). Each
row also carries the CPU time per event of every process (API, processor,
Kafka, MongoDB, Redis, this client) and each ``wait=true`` row the processor's
own metrics over its slices (where a waited event's time goes): mean batch
size, mean batch wait (first event taken → flush), mean write time and mean
store delay (Kafka timestamp → batch stored). Compare ratios, not absolutes.
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
import psutil
from common import child_env, spawn, stack_settings, wait_ready

from audit_events.topic_admin import ensure_topics
from auditstream.embedded import free_port, kafka_server, mongo_server, redis_server, stop_all
from query_api.auth import mint_token
from stream_processor.kafka import FetchWait

SECRET = "bench-wait-secret-0123456789abcdef0123"
TENANT = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Slices:
    """One path's slices at one client count: latencies, statuses, time, CPU."""

    def __init__(self, wait: bool, clients: int) -> None:
        self.wait, self.clients = wait, clients
        self.latencies: list[float] = []
        self.status: Counter[int] = Counter()
        self.elapsed = 0.0
        self.rates: list[float] = []  # events/s of each slice
        self.cpu: Counter[str] = Counter()  # CPU seconds per process
        self.ids = iter(range(10**9))

    def row(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "path": "wait=true" if self.wait else "202",
            "clients": self.clients,
            "events_per_s": round(n / self.elapsed, 1) if self.elapsed else 0.0,
            "p50_ms": round(pct(self.latencies, 0.5) * 1000, 1),
            "p99_ms": round(pct(self.latencies, 0.99) * 1000, 1),
            "status": dict(self.status),
            "cpu_ms_per_event": {k: round(v * 1000 / n, 2) for k, v in self.cpu.items()}
            if n
            else {},
        }


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """CPU time (user + system) of each process so far."""
    out = {}
    for name, proc in procs.items():
        try:
            times = proc.cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    return out


async def scenario(
    client: httpx.AsyncClient,
    into: Slices,
    seconds: float,
    procs: dict[str, psutil.Process],
) -> None:
    """One slice of ``seconds`` of ``into.clients`` clients posting single events."""
    count = len(into.latencies)
    deadline = time.perf_counter() + seconds
    tag = "w" if into.wait else "p"

    async def worker() -> None:
        while time.perf_counter() < deadline:
            body = {
                "id": f"{tag}{into.clients}-{next(into.ids)}",
                "tenant": TENANT,
                "action": "user.login",
            }
            start = time.perf_counter()
            resp = await client.post("/v1/events" + ("?wait=true" if into.wait else ""), json=body)
            into.latencies.append(time.perf_counter() - start)
            into.status[resp.status_code] += 1

    cpu = cpu_seconds(procs)
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(into.clients)))
    elapsed = time.perf_counter() - began
    for name, spent in cpu_seconds(procs).items():
        into.cpu[name] += spent - cpu[name]
    into.elapsed += elapsed
    into.rates.append((len(into.latencies) - count) / elapsed)


async def drained(client: httpx.AsyncClient, event_id: str, timeout: float = 120.0) -> None:
    """Return once the processor stored everything published so far (one tenant, one
    partition: an event stored means every earlier one is). A plain POST and reads,
    not ``?wait=true``: that would shorten the worker's fetch wait (FetchWait)."""
    deadline = time.monotonic() + timeout
    body = {"id": event_id, "tenant": TENANT, "action": "user.login"}
    await client.post("/v1/events", json=body)
    while (await client.get(f"/v1/events/{event_id}")).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"the processor did not catch up within {timeout:.0f} s")
        await asyncio.sleep(0.05)


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
                "read_audit": False,  # the drain's reads publish nothing
                **({"batch_max_ms": args.batch_max_ms} if args.batch_max_ms else {}),
                **({"kafka_fetch_max_wait_ms": args.fetch_wait_ms} if args.fetch_wait_ms else {}),
                **(
                    {"kafka_fetch_active_wait_ms": args.fetch_active_wait_ms}
                    if args.fetch_active_wait_ms
                    else {}
                ),
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
        scopes = ["events:write", "events:read"]
        token = mint_token(settings, subject="bench", tenant=TENANT, scopes=scopes)
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
            procs = {
                "api": psutil.Process(children[1].pid),
                "processor": psutil.Process(children[0].pid),
                "bench": psutil.Process(),
                **{s.role: psutil.Process(s.proc.pid) for s in servers if s.proc is not None},
            }
            rows = []
            slice_seconds = args.seconds / args.rounds
            for clients in args.clients:
                plain, waited = Slices(False, clients), Slices(True, clients)
                stats: dict[str, float] = {}
                for round_ in range(args.rounds):
                    for one in (plain, waited) if round_ % 2 == 0 else (waited, plain):
                        before = await processor_stats(client, metrics_url)
                        await scenario(client, one, slice_seconds, procs)
                        if one.wait:
                            after = await processor_stats(client, metrics_url)
                            for k, v in after.items():
                                stats[k] = stats.get(k, 0.0) + v - before.get(k, 0.0)
                            # the worker's fetch wait grows back before a 202 slice
                            await asyncio.sleep(FetchWait.idle_after + 1.0)
                        else:  # the next slice starts without the backlog of this one
                            await drained(client, f"drain-{clients}-{round_}")
                p, w = plain.row(), waited.row()
                w["processor"] = per_batch({}, stats)
                w["vs_202"] = round(w["events_per_s"] / p["events_per_s"], 2)
                w["vs_202_rounds"] = [
                    round(a / b, 2) for a, b in zip(waited.rates, plain.rates, strict=True)
                ]
                rows += [p, w]
                print(json.dumps(p), json.dumps(w), sep="\n", flush=True)
        return {
            "batch_max_ms": settings.batch_max_ms,
            "kafka_fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
            "kafka_fetch_active_wait_ms": settings.kafka_fetch_active_wait_ms,
            "cpu_count": os.cpu_count(),
            "seconds_per_path": args.seconds,
            "rounds": args.rounds,
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
    parser.add_argument("--seconds", type=float, default=10.0, help="per path and client count")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved slices per path")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--batch-max-ms", type=int, help="the processor's BATCH_MAX_MS")
    parser.add_argument("--fetch-wait-ms", type=int, help="the processor's KAFKA_FETCH_MAX_WAIT_MS")
    parser.add_argument(
        "--fetch-active-wait-ms", type=int, help="the processor's KAFKA_FETCH_ACTIVE_WAIT_MS"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "wait.json")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    report = asyncio.run(run(args))
    out = args.out
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
