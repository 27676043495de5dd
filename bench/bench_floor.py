"""The cached-hit floor beside the real API, same run (issue 18).

    .venv/bin/python bench/bench_floor.py [--clients 16] [--seconds 10] [--events 2000]

1. The floor: a minimal Quart app under Hypercorn (one process) whose one route
   does one Redis GET of a 78 KB-ish value and returns it: what a cached hit
   cannot beat with this framework.
2. Then bench_api.py's scenarios (cached list hit, uncached list, get-by-id) on
   the real API, in the same process run, then the floor again; the cached
   hit's ratio to the mean of the two floor runs, in req/s and in server CPU
   per request (``/proc``: the server process and its children), the number
   that does not depend on how much of the shared cores a run got.
The API audits its reads here (the default: each hit also queues a read event
for Kafka); bench_workers.py measures the hit alone, 1 and 2 workers, in
interleaved rounds with a cheaper load generator.
Writes bench/results/floor.json. Shared machine: read the ratio, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import bench_api
import httpx
from bench_api import scenario

from auditstream.embedded import free_port, redis_server

FLOOR_APP = textwrap.dedent(
    """
    import os
    from quart import Quart, Response
    from redis.asyncio import Redis

    app = Quart(__name__)
    redis = Redis.from_url(os.environ["FLOOR_REDIS"])

    @app.get("/v1/events")
    async def hit():
        return Response(await redis.get("floor"), content_type="application/json")

    @app.get("/readyz")
    async def ready():
        return "ok"
    """
)


async def floor(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    server = redis_server(workdir)
    server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        (workdir / "floor_app.py").write_text(FLOOR_APP)
        from redis.asyncio import Redis

        redis = Redis.from_url(server.url)
        await redis.set("floor", b'{"data": "' + b"x" * 78_000 + b'"}')
        await redis.aclose()
        port = free_port()
        env = {**os.environ, "FLOOR_REDIS": server.url}
        argv = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "floor_app:app"]
        proc = subprocess.Popen(argv, cwd=workdir, env=env)  # noqa: ASYNC220
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
            return await scenario(
                client,
                "floor (Quart + one GET)",
                lambda i: "/v1/events",
                args.clients,
                args.seconds,
                {"-"},
                proc.pid,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    before = asyncio.run(floor(args))
    print(json.dumps(before), flush=True)
    api = asyncio.run(bench_api.run(args))
    after = asyncio.run(floor(args))  # the floor before and after: the machine is shared
    print(json.dumps(after), flush=True)
    floor_row = {**before, "rps": round((before["rps"] + after["rps"]) / 2, 1)}
    cached = api["results"][0]
    floor_cpu = (before["server_cpu_ms_per_request"] + after["server_cpu_ms_per_request"]) / 2
    floor_row["server_cpu_ms_per_request"] = round(floor_cpu, 3)
    report = {
        "floor_before": before,
        "floor_after": after,
        "floor": floor_row,
        "api": api,
        "cached_hit_vs_floor_rps": round(cached["rps"] / floor_row["rps"], 2),
        # The per-process cost, whatever share of the cores each run got (issue 18:
        # >= 0.9). The cached hit here includes auditing the read (the default).
        "floor_vs_cached_hit_cpu_per_request": round(
            floor_cpu / cached["server_cpu_ms_per_request"], 2
        ),
    }
    print(json.dumps(report["api"]["results"], indent=1))
    print(
        f"cached hit / floor (req/s): {report['cached_hit_vs_floor_rps']};"
        f" floor CPU/request / cached hit CPU/request:"
        f" {report['floor_vs_cached_hit_cpu_per_request']}"
    )
    out = Path(__file__).parent / "results" / "floor.json"
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
