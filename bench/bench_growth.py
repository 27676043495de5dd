"""The uncached list as the store grows: ``read_page`` beside the direct bounded indexed query.

    .venv/bin/python bench/bench_growth.py [--budget 600] [--sizes 5000,20000,...] [--rounds 21]

Starts SecantusDB (temporary data dir), creates ``EVENT_INDEXES`` and bulk-inserts
sealed-shaped documents of one live tenant (one second apart; every field the list
reads: actor, one target, search terms, ``seq``/``hash``; 1 in 20 erased) straight
into the collection, 1,000 per ``insert_many``. The tenant stays live: before each
round the events between its newest one and now are added (one a second), so the
list's first window always starts at the data, whatever the run's duration. At each
size, after a warm-up, ``--rounds`` interleaved rounds (the three reads in a
rotating order, so drift and neighbours' load hit each alike) time the first page
(limit 50) of:
- reference: the direct bounded indexed query ``{tenant, <the list's index equality>,
  newest - 60 s < occurred_at <= newest}`` sorted ``(occurred_at, _id)`` desc, limit 51
  (the issue's floor);
- list: ``query_api.listing.read_page`` (what an uncached ``GET /v1/events`` reads);
- actor: ``read_page`` with ``actor=user-7`` (1 event in 50);
and reports each read's median and the median of the per-round ratios to the
reference (paired, so a noisy round cancels out). The store keeps growing to the
next size until ``--budget`` seconds would be exceeded (the insert rate so far
says whether the next size fits); the largest size reached is printed.

Writes ``bench/results/growth.csv`` and ``bench/results/growth.svg`` (``--name``; matplotlib,
from the ``dev``/``bench`` extra; without it only the CSV and the text table).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from werkzeug.datastructures import MultiDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit_events.codec import event_to_document, search_terms
from audit_events.schema import AuditEvent
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION
from auditstream.embedded import mongo_server
from query_api.listing import index_equality, read_page
from query_api.query import parse_list_query, sort_spec

TENANT = "bench"
RESULTS = Path(__file__).parent / "results"
SIZES = "5000,20000,50000,100000,200000,400000,700000,1000000"
ACTIONS = ("invoice.update", "invoice.create", "user.login", "report.export")


def template(newest: datetime) -> dict[str, Any]:
    """One stored document as the processor writes it (the others are copies)."""
    e = AuditEvent.model_validate(
        {
            "id": "evt-0000000",
            "tenant": TENANT,
            "action": ACTIONS[0],
            "occurred_at": newest,
            "actor": {"id": "user-0", "type": "user"},
            "targets": [{"type": "invoice", "id": "0"}],
            "description": "benchmark event",
        }
    )
    doc = event_to_document(e, datetime.now(UTC))
    doc.update(seq=1, hash="0" * 64, prev_hash="0" * 64)
    return doc


@functools.cache
def _search(k: int) -> list[str]:
    """The stored ``search`` array of the events with ``i % 500 == k`` (action, actor
    and target are functions of ``i % 500``), as the processor's codec builds it."""
    e = AuditEvent.model_validate(
        {
            "id": "evt",
            "tenant": TENANT,
            "action": ACTIONS[k % 4],
            "actor": {"id": f"user-{k % 50}", "type": "user"},
            "targets": [{"type": "invoice", "id": str(k)}],
            "description": "benchmark event",
        }
    )
    return search_terms(e)


def documents(
    base: dict[str, Any], newest: datetime, start: int, stop: int
) -> list[dict[str, Any]]:
    """Events ``start`` … ``stop - 1``: event ``i`` is ``i`` seconds before ``newest``."""
    out = []
    for i in range(start, stop):
        action = ACTIONS[i % 4]
        doc = {
            **base,
            "_id": f"{TENANT}/evt-{i:08d}",
            "id": f"evt-{i:08d}",
            "action": action,
            "occurred_at": newest - timedelta(seconds=i),
            "actor": {"id": f"user-{i % 50}", "type": "user"},
            "targets": [{"type": "invoice", "id": str(i % 500)}],
            "search": _search(i % 500),
            "seq": 10_000_000 - i,
        }
        if i % 20 == 0:
            doc["erased"] = {"by": "bench", "reason": "bench"}
        out.append(doc)
    return out


class Tail:
    """Keeps the tenant live: events one second apart from ``newest`` up to now
    (event ``-k`` is ``k`` seconds after ``newest``)."""

    def __init__(self, coll: Any, base: dict[str, Any], newest: datetime) -> None:
        self.coll, self.base, self.newest, self.added = coll, base, newest, 0

    async def catch_up(self) -> datetime:
        """Insert the events up to now; the newest stored time."""
        due = int((datetime.now(UTC) - self.newest).total_seconds())
        if due > self.added:
            await self.coll.insert_many(documents(self.base, self.newest, -due, -self.added))
            self.added = due
        return self.newest + timedelta(seconds=self.added)


async def timed(fn: Any) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = await fn()
    return (time.perf_counter() - start) * 1000, ids


async def measure(coll: Any, size: int, tail: Tail, rounds: int) -> dict[str, Any]:
    top = await tail.catch_up()
    unfiltered = parse_list_query(MultiDict({"limit": "50"}))

    async def reference() -> list[str]:
        # The page's own bounded index range: the floor any list read can reach.
        window = {"$gt": top - timedelta(seconds=60), "$lt": top + timedelta(seconds=1)}
        # The same index range the list reads (its index equality, e.g. the "*" token).
        where = {"tenant": TENANT, **index_equality(unfiltered), "occurred_at": window}
        return [d["_id"] async for d in coll.find(where).sort(sort_spec("desc")).limit(51)]

    async def listed(params: dict[str, str]) -> list[str]:
        query = parse_list_query(MultiDict({**params, "limit": "50"}))
        return [d["_id"] for d in await read_page(coll, TENANT, query, False)]

    reads = {
        "reference": reference,
        "list": lambda: listed({}),
        "actor": lambda: listed({"actor": "user-7"}),
    }
    names = list(reads)
    for name in names * 2:  # warm-up: connections, the server's caches
        await reads[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        top = await tail.catch_up()
        for name in names[r % 3 :] + names[: r % 3]:  # rotating order
            ms, ids = await timed(reads[name])
            if name != "reference" and len(ids) != 51:
                raise SystemExit(f"{size}: short {name} page ({len(ids)})")
            times[name].append(ms)

    def ratio(name: str) -> float:
        return statistics.median(
            a / b for a, b in zip(times[name], times["reference"], strict=True)
        )

    return {
        "stored_events": size,
        "reference_ms": round(statistics.median(times["reference"]), 2),
        "list_ms": round(statistics.median(times["list"]), 2),
        "actor_ms": round(statistics.median(times["actor"]), 2),
        "list_vs_reference": round(ratio("list"), 2),
        "actor_vs_reference": round(ratio("actor"), 2),
    }


async def run(sizes: list[int], rounds: int, budget: float) -> list[dict[str, Any]]:
    server = mongo_server(Path(tempfile.mkdtemp(prefix="bench-growth-")))
    server.start()
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url, tz_aware=True)
        coll = client.bench[EVENTS_COLLECTION]
        await coll.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
        newest = datetime.now(UTC).replace(microsecond=0)
        base = template(newest)
        tail = Tail(coll, base, newest)
        stored, inserting, rate = 0, 0.0, 0.0
        for size in sorted(sizes):
            if rate and time.perf_counter() - began + (size - stored) / rate > budget:
                print(f"stop: {size:,} would not fit in the {budget:.0f} s budget", flush=True)
                break
            t = time.perf_counter()
            for start in range(stored, size, 1000):
                await coll.insert_many(documents(base, newest, start, min(size, start + 1000)))
            inserting += time.perf_counter() - t
            stored = size
            rate = stored / inserting
            row = await measure(coll, size + tail.added, tail, rounds)
            rows.append({**row, "stored_events": size, "insert_per_s": round(rate)})
            print(rows[-1], flush=True)
        await client.close()
    finally:
        server.stop()
    return rows


def write(rows: list[dict[str, Any]], name: str) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"{name}.csv (no matplotlib: no plot)"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r["stored_events"] for r in rows]
    ax.plot(xs, [r["list_vs_reference"] for r in rows], "o-", label="list (read_page)")
    ax.plot(xs, [r["actor_vs_reference"] for r in rows], "s-", label="list, actor filter")
    ax.axhline(2.0, color="grey", linestyle="--", label="target: 2x the direct indexed query")
    ax.set_xscale("log")
    ax.set_xlabel("stored events (one tenant)")
    ax.set_ylabel("median ratio to the direct bounded query")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Uncached list as the store grows (SecantusDB)")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.svg")
    return f"{name}.csv, {name}.svg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=SIZES)
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds per size")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--name", default="growth", help="bench/results/NAME.csv and .svg")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = asyncio.run(run(sizes, args.rounds, args.budget))
    print(f"{'stored':>10} {'ref ms':>8} {'list ms':>8} {'ratio':>6} {'actor ms':>9} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['stored_events']:>10,} {r['reference_ms']:>8} {r['list_ms']:>8} "
            f"{r['list_vs_reference']:>6} {r['actor_ms']:>9} {r['actor_vs_reference']:>6}"
        )
    print(f"largest size reached: {rows[-1]['stored_events']:,} stored events")
    print(f"written to bench/results/{write(rows, args.name)}")


if __name__ == "__main__":
    main()
