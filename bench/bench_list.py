"""Uncached list reads on the store, old query shape vs query_api/listing.py, same run.

    .venv/bin/python bench/bench_list.py [--sizes 5000,20000] [--repeat 15]

Starts SecantusDB (temporary data dir), creates EVENT_INDEXES, inserts events of
one tenant one second apart ending now (a live tenant), 1 in 20 erased, and
times, per size, p50 of:
- reference: the direct indexed query ``{tenant, occurred_at >= newest - 60 s}``
  sorted ``(occurred_at, _id)`` desc, limit 51 (the issue's bounded-range floor;
  for a sparse filter this window holds less than a page);
- direct: the old query without the ``erased`` clause (the issue's "same query
  without the erased clause"; unbounded, so it grows with the stored events);
- old: ``mongo_filter`` (with ``erased: {$exists: false}``) sorted, limit 51;
- new: ``read_page`` (bounded windows, erased checked after the range);
each for the unfiltered page and ``actor=user-7``, and a cursor page 3 pages in.
Both result lists are compared (same ids) before timing. The machine is shared:
read the ratios against the reference, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.storage import EVENT_INDEXES
from auditstream.embedded import mongo_server
from query_api.listing import read_page
from query_api.query import encode_cursor, mongo_filter, parse_list_query, sort_spec

TENANT = "bench"


def event(i: int, newest: datetime) -> dict[str, Any]:
    """Event ``i`` seconds before ``newest``."""
    e = AuditEvent.model_validate(
        {
            "id": f"evt-{i:07d}",
            "tenant": TENANT,
            "action": ("invoice.update", "invoice.create", "user.login", "report.export")[i % 4],
            "occurred_at": newest - timedelta(seconds=i),
            "actor": {"id": f"user-{i % 50}", "type": "user"},
            "targets": [{"type": "invoice", "id": str(i % 500)}],
            "description": f"benchmark event number {i}",
        }
    )
    doc = event_to_document(e, datetime.now(UTC))
    if i % 20 == 0:
        doc["erased"] = {"by": "bench", "reason": "bench"}
    return doc


async def timed(fn: Any, repeat: int) -> tuple[float, list[str]]:
    times, ids = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        ids = await fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2), ids


async def measure(coll: Any, count: int, top: datetime, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label, params in [("all", {}), ("actor", {"actor": "user-7"})]:
        query = parse_list_query(MultiDict({**params, "limit": "50"}))
        old_docs = await coll.find(mongo_filter(TENANT, query)).sort(sort_spec("desc")).to_list(151)
        for page in ("first", "cursor"):
            q = query
            if page == "cursor":
                d = old_docs[min(149, len(old_docs) // 2)]
                q = parse_list_query(
                    MultiDict(
                        {
                            **params,
                            "limit": "50",
                            "cursor": encode_cursor(d["occurred_at"], d["_id"]),
                        }
                    )
                )

            async def ref(q: Any = q) -> list[str]:
                bound = (q.cursor[0] if q.cursor else top) - timedelta(seconds=60)
                where = {"tenant": TENANT, "occurred_at": {"$gt": bound}}
                if "actor" in q.filters:
                    where["actor.id"] = q.filters["actor"]
                find = coll.find(where).sort(sort_spec("desc")).limit(51)
                return [d["_id"] async for d in find]

            async def old(q: Any = q) -> list[str]:
                find = coll.find(mongo_filter(TENANT, q)).sort(sort_spec("desc")).limit(51)
                return [d["_id"] async for d in find]

            async def new(q: Any = q) -> list[str]:
                return [d["_id"] for d in await read_page(coll, TENANT, q, False)]

            async def direct(q: Any = q) -> list[str]:
                where = mongo_filter(TENANT, q)
                where.pop("erased")  # the same query without the erased clause
                find = coll.find(where).sort(sort_spec("desc")).limit(51)
                return [d["_id"] async for d in find]

            t_ref, _ = await timed(ref, repeat)
            t_direct, _ = await timed(direct, max(3, repeat // 3))
            t_old, ids_old = await timed(old, max(3, repeat // 3))
            t_new, ids_new = await timed(new, repeat)
            if ids_old != ids_new:
                raise SystemExit(f"{label}/{page}: the pages differ")
            rows.append(
                {
                    "events": count,
                    "query": f"{label}/{page}",
                    "reference_ms": t_ref,
                    "direct_no_erased_ms": t_direct,
                    "old_ms": t_old,
                    "new_ms": t_new,
                    "new_vs_reference": round(t_new / t_ref, 2),
                    "old_vs_reference": round(t_old / t_ref, 2),
                    "new_vs_direct": round(t_new / t_direct, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


async def run(sizes: list[int], repeat: int) -> list[dict[str, Any]]:
    server = mongo_server(Path(tempfile.mkdtemp(prefix="bench-list-")))
    server.start()
    rows: list[dict[str, Any]] = []
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url, tz_aware=True)
        coll = client.bench.events
        await coll.create_indexes([IndexModel(k, name=n) for n, k in EVENT_INDEXES])
        newest, stored = datetime.now(UTC), 0
        for size in sorted(sizes):
            # older events below the ones already stored, so "now" stays the newest
            for start in range(stored, size, 1000):
                await coll.insert_many(
                    [event(i, newest) for i in range(start, min(size, start + 1000))]
                )
            stored = size
            top = newest.replace(microsecond=newest.microsecond // 1000 * 1000)
            rows += await measure(coll, size, top, repeat)
        await client.close()
    finally:
        server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rows = asyncio.run(run([int(s) for s in args.sizes.split(",")], args.repeat))
    out = Path(__file__).parent / "results" / "list.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
