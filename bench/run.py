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
   Kafka → stored delay over the same interval;
4. issue 18's targets (:mod:`targets`): the target scripts run as subprocesses, each
   on its own servers, writing to ``bench/results/targets/``; results.md gets the
   "Issue 18 targets" table (measured, reference, ratio, target, met) and
   ``targets.png``. ``--targets-only`` runs just this step (quick sizes) and merges it
   into the last results.json; ``--skip-targets`` leaves it out.

Modules (run as scripts from this folder): ``stack`` (the servers, shared with the
tests through :mod:`auditstream.devstack`), ``ingest``, ``reads``, ``latency``,
``targets``, ``report``; this file only sequences them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import wait_ready
from ingest import ingestion, per_event_inserts, store_ceiling
from latency import latencies, latency_only
from reads import reads, seed_store
from report import RESULTS, machine, write_reports
from stack import Stack
from targets import run_targets

from audit_events.codec import event_to_document
from auditstream.embedded import free_port
from producers.loadgen import generate_events
from query_api.auth import mint_token


async def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.latency_only:
        return await latency_only(args)
    if args.targets_only:
        return targets_only(args)
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
    if not args.skip_targets:
        print("4. issue 18 targets (each script on its own servers) …", flush=True)
        results["targets"] = run_targets(
            quick=args.target_sizes == "quick", skip=frozenset(args.targets_skip)
        )
        results.pop("targets_note", None)
    return results


def targets_only(args: argparse.Namespace) -> dict[str, Any]:
    """Step 4 alone, merged into the last results.json (steps 1-3 kept as they were)."""
    previous = RESULTS / "results.json"
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    results.setdefault("machine", machine())
    quick = args.target_sizes != "full"
    results["targets"] = run_targets(quick=quick, skip=frozenset(args.targets_skip))
    results["targets_note"] = (
        f"This step alone (`--targets-only`, {'quick' if quick else 'full'} sizes) on "
        f"{machine()['date']}; the sections above and the ingestion rows come from the "
        "last whole run."
    )
    return results


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
    p.add_argument(
        "--targets-only",
        action="store_true",
        help="run only step 4, the issue-18 target scripts (quick sizes unless "
        "--target-sizes full, ~10 min); merge into results.json",
    )
    p.add_argument("--skip-targets", action="store_true", help="leave out step 4")
    p.add_argument(
        "--targets-skip",
        nargs="+",
        default=[],
        metavar="SCRIPT",
        help="step 4 without these scripts (e.g. bench_growth.py): their files in "
        "bench/results/targets/ from an earlier run are reported as they are",
    )
    p.add_argument(
        "--target-sizes",
        choices=["quick", "full"],
        help="step 4's sizes (default: full in a whole run, quick with --targets-only); "
        "full grows the uncached-list store to 1,000,000 events (about an hour here)",
    )
    p.add_argument("--timeout", type=float, default=900.0)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    outcome = asyncio.run(main(arguments))
    write_reports(outcome)
    print((RESULTS / "results.md").read_text())
