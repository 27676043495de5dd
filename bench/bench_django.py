"""What auditing costs a Django request: the shop test project, in-process.

    .venv/bin/python bench/bench_django.py [--requests 2000] [--rounds 3]

Each scenario runs in its own process: Django's test client sends ``--requests``
GET /ping/ requests (after a warm-up) through the whole middleware stack, and
django-easy-audit records one request event for each. Scenarios:

- ``easyaudit, null backend``: easyaudit's own work, the record thrown away (baseline);
- ``auditstream, Kafka up``: our backend, durable (the event is committed to the
  per-process spool file before the request goes on; a background thread sends it
  to a Tansu broker this script starts);
- ``auditstream, Kafka down``: the same with nothing listening at the bootstrap.

The scenarios run interleaved, ``--rounds`` times each (the machine's load changes
between runs); the table pools every round's requests. Prints per-request latency
(mean, p50, p99) and the cost added over the baseline. A benchmark script, not a
test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.integration.django_project.settings"
import django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("migrate", run_syncdb=True, verbosity=0)
client = Client(HTTP_USER_AGENT="bench/1.0")
for n in range({warmup}):
    client.get("/ping/", {{"n": n}})
times = []
for n in range({requests}):
    t = time.perf_counter()
    response = client.get("/ping/", {{"n": n}})
    times.append(time.perf_counter() - t)
    assert response.status_code == 200
out = {{"times": times}}
from producers import django_backend
producer = django_backend._state.get("producer")
if producer is not None:
    if {wait_delivery}:
        t = time.perf_counter()
        producer.wait_spool_empty(120)
        out["drain_s"] = time.perf_counter() - t
    out["stats"] = producer.stats().__dict__
print(json.dumps(out))
"""


def run(name: str, env: dict[str, str], requests: int, wait_delivery: bool) -> dict[str, Any]:
    code = CHILD.format(repo=str(REPO), warmup=200, requests=requests, wait_delivery=wait_delivery)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"name": name, "times": out["times"], "stats": out.get("stats"), **out}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    times = sorted(t for r in runs for t in r["times"])
    return {
        "name": runs[0]["name"],
        "mean_ms": statistics.fmean(times) * 1000,
        "p50_ms": times[len(times) // 2] * 1000,
        "p99_ms": times[int(len(times) * 0.99)] * 1000,
        "stats": runs[-1].get("stats"),
        "drain_s": max((r.get("drain_s") or 0.0) for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from auditstream.embedded import free_port, kafka_server

    work = Path(tempfile.mkdtemp(prefix="bench-django-"))
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AUDITSTREAM_", "SHOP_"))},
        "PYTHONPATH": str(REPO),
        "AUDITSTREAM_DATA_DIR": str(work / "data"),
        "AUDITSTREAM_TOPIC_EVENTS": f"bench.django.{uuid.uuid4().hex[:8]}",
    }
    null = "tests.integration.django_project.shop.null_backend.NullBackend"
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    kafka = kafka_server(work / "kafka")
    kafka.start()
    scenarios = [
        ("easyaudit, null backend", {"SHOP_AUDIT_BACKEND": null}, False),
        ("auditstream, Kafka up", {"AUDITSTREAM_KAFKA_BOOTSTRAP": kafka.url}, True),
        ("auditstream, Kafka down", {"AUDITSTREAM_KAFKA_BOOTSTRAP": down}, False),
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in scenarios}
    try:
        for round_ in range(args.rounds):
            for n, (name, extra, wait) in enumerate(scenarios):
                env = {
                    "AUDITSTREAM_KAFKA_BOOTSTRAP": kafka.url,
                    **base,
                    **extra,
                    "SHOP_DB": str(work / f"shop-{round_}-{n}.sqlite3"),
                    "SHOP_SPOOL_DIR": str(work / f"spool-{round_}-{n}"),
                }
                started = time.monotonic()
                runs[name].append(run(name, env, args.requests, wait))
                print(
                    f"# round {round_}, {name}: {time.monotonic() - started:.1f}s", file=sys.stderr
                )
    finally:
        kafka.stop()

    results = [summary(r) for r in runs.values()]
    base_mean, base_p50 = results[0]["mean_ms"], results[0]["p50_ms"]
    print(
        f"\n{args.rounds} x {args.requests} GET /ping/ per scenario through Django's test "
        "client (one process per run, scenarios interleaved)\n"
    )
    print("| scenario | mean ms | p50 ms | p99 ms | added: mean | added: p50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        mean, p50 = r["mean_ms"], r["p50_ms"]
        added = (
            ("—", "—")
            if r is results[0]
            else (f"{mean - base_mean:+.3f} ms", f"{p50 - base_p50:+.3f} ms")
        )
        print(
            f"| {r['name']} | {mean:.3f} | {p50:.3f} | {r['p99_ms']:.3f} | "
            f"{added[0]} | {added[1]} |"
        )
    for r in results[1:]:
        stats = r["stats"] or {}
        drain = (
            f", all acknowledged {r['drain_s']:.2f}s after the last request" if r["drain_s"] else ""
        )
        print(
            f"\n{r['name']} (last run): spooled {stats.get('spooled')}, acknowledged "
            f"{stats.get('acknowledged')}, still spooled {stats.get('spool_events')}{drain}"
        )


if __name__ == "__main__":
    main()
