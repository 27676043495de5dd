"""Cached hit per API process and with AUDITSTREAM_API_WORKERS=2, beside the floor (issue 18).

    .venv/bin/python bench/bench_workers.py [--clients 16] [--seconds 8] [--events 2000]

One run, one embedded stack (Tansu, SecantusDB, redis-server):
1. the floor: a minimal Quart app under one Hypercorn process whose one route
   returns one Redis GET of a value the size of the cached page;
2. ``auditstream api`` with 1 worker, then with 2 workers: the cached list
   ``GET /v1/events?limit=100`` (every request a hit);
3. the floor again (the machine is shared: the floor is the mean of both runs).

The load generator is a raw HTTP/1.1 keep-alive client (asyncio streams, a
pre-built request), far cheaper per request than the servers, so on this 2-core
machine it leaves the servers most of the CPU. Besides req/s it reads the
servers' CPU time (``/proc``, the process and its children): CPU ms per request
is the per-process cost, independent of how many cores the run got.
Targets (issue 18): hit >= 0.9x the floor per process, >= 1.6x with two.
Writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_api import SECRET, TENANT, seed
from bench_floor import FLOOR_APP
from common import child_env, spawn, stack_settings, wait_ready

from auditstream.embedded import free_port, kafka_server, mongo_server, redis_server, stop_all
from query_api.auth import mint_token

RESULTS = Path(__file__).parent / "results"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live children (the API workers)."""
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


async def hammer(
    port: int, path: str, headers: dict[str, str], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` keep-alive connections sending GET ``path`` for ``seconds``."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode()
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length, cache = 0, "-"
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "x-cache":
                        cache = value.strip()
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                key = f"{status_line.split()[1].decode()} {cache}"
                statuses[key] = statuses.get(key, 0) + 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "answers": statuses,
    }


async def measure(
    name: str, pid: int, port: int, path: str, headers: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    await hammer(port, path, headers, args.clients, 1.0)  # warm-up
    cpu0 = cpu_seconds(pid)
    row = await hammer(port, path, headers, args.clients, args.seconds)
    cpu = cpu_seconds(pid) - cpu0
    row = {"run": name, **row, "server_cpu_ms_per_request": round(cpu * 1000 / row["requests"], 3)}
    print(json.dumps(row), flush=True)
    return row


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def floor(
    workdir: Path, redis_url: str, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    await redis.set("floor", b'{"data": "' + b"x" * max(0, size - 12) + b'"}')
    await redis.aclose()
    (workdir / "floor_app.py").write_text(FLOOR_APP)
    port = free_port()
    argv = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "floor_app:app"]
    proc = subprocess.Popen(argv, cwd=workdir, env={**os.environ, "FLOOR_REDIS": redis_url})  # noqa: ASYNC220
    try:
        await wait_ready(f"http://127.0.0.1:{port}")
        return await measure("floor (Quart + one GET)", proc.pid, port, "/v1/events", {}, args)
    finally:
        stop(proc)


async def api(
    settings: Any, workdir: Path, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    env = child_env(settings, SECRET, AUDITSTREAM_API_WORKERS=str(workers))
    proc = spawn(env, workdir / f"api-{workers}.log", "api")
    try:
        url = f"http://127.0.0.1:{settings.api_port}"
        await wait_ready(url)
        token = mint_token(settings, subject="bench", tenant=TENANT, scopes=["events:read"])
        headers = {"Authorization": f"Bearer {token}"}
        path = f"/v1/events?limit={args.limit}"
        return await measure(
            f"api cached hit, {workers} worker(s)", proc.pid, settings.api_port, path, headers, args
        )
    finally:
        stop(proc)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    servers = [kafka_server(workdir), mongo_server(workdir), redis_server(workdir)]
    try:
        for server in servers:
            server.start()
        settings = stack_settings(workdir, servers, SECRET)
        settings = settings.model_copy(update={"read_audit": False})  # a hit only, no read event
        await seed(settings, args.events)
        one = await api(settings, workdir, 1, args)
        size = await page_size(settings)
        before = await floor(workdir, settings.redis_url or "", size, args)
        two = await api(settings, workdir, 2, args)
        after = await floor(workdir, settings.redis_url or "", size, args)
    finally:
        stop_all(servers)
    floor_rps = (before["rps"] + after["rps"]) / 2
    floor_cpu = (before["server_cpu_ms_per_request"] + after["server_cpu_ms_per_request"]) / 2
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "page_bytes": size,
        "cpu_count": os.cpu_count(),
        "runs": [one, before, two, after],
        "one_worker_vs_floor_rps": round(one["rps"] / floor_rps, 2),
        "two_workers_vs_floor_rps": round(two["rps"] / floor_rps, 2),
        "floor_vs_one_worker_cpu_per_request": round(
            floor_cpu / one["server_cpu_ms_per_request"], 2
        ),
    }


async def page_size(settings: Any) -> int:
    """The size of the cached page: the largest list value in Redis."""
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url or "")
    sizes = [await redis.strlen(k) async for k in redis.scan_iter("*:q:list:*")]
    await redis.aclose()
    return max(sizes) if sizes else 78_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "workers.json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"cached hit / floor (req/s): 1 worker {report['one_worker_vs_floor_rps']}"
        f" (target >= 0.9), 2 workers {report['two_workers_vs_floor_rps']} (target >= 1.6);"
        f" floor CPU/request / API CPU/request: {report['floor_vs_one_worker_cpu_per_request']}"
    )


if __name__ == "__main__":
    main()
