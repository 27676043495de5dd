"""Store CPU per 1,000 events: the events indexes before issue 18 vs ``EVENT_INDEXES`` now.

    .venv/bin/python bench/bench_store_cpu.py [--events 6000] [--rounds 3]

Starts one SecantusDB (temporary data dir) and, alternating the index sets
``--rounds`` times on fresh collections of the same server, inserts the same
sealed documents (``auditstream loadgen``'s events, 50 tenants, with the seq and
hash the processor gives them) 500 per ordered ``insert_many``, as the processor
writes. Measures the SecantusDB server process's CPU time (user + system, from
``/proc/<pid>/stat``) over each insert, per 1,000 events, p50 over the rounds:
- before: the 12 indexes of the code before issue 18 (``_id``, five shared
  ``EVENT_INDEXES``, the API's five ``READ_INDEXES``, the unique ``tenant_seq``),
  documents whose ``search`` holds the ``q`` words only (those of ids too);
- previous: the 7 indexes of issue 18's first step (``_id``, ``tenant_time``,
  ``tenant_action_time``, ``tenant_actor_time``, ``api_target_id_time``,
  ``tenant_search_time``, ``tenant_seq``), the same words only;
- after: what the code stores now: ``_id``, ``EVENT_INDEXES`` (``tenant_search_time``
  alone) and ``tenant_seq``, the documents of ``event_to_document`` (the words and
  the tokens ``*``, ``c:<action>``, ``a:<actor id>``, ``t:<target id>``);
- none: ``_id`` only (the server's floor);
- designs not shipped, measured for the report: ``no_id_words`` (after, without
  the words of actor and target ids: ``q`` would match an id whole, through its
  token, not by its words), ``no_id_words_asc`` (that, with ``tenant_search_time``
  ascending on ``occurred_at`` and ``_id``: a new index on every deployment) and
  ``tokens_only`` (after, without any word: ``q`` would read the tenant's whole
  ``*`` range).
Prints index entries per event (as MongoDB counts them; SecantusDB writes one more,
the whole array, per array-valued index of a document) and ms CPU per 1,000 events
for each, and the ratios to before. Writes ``bench/results/store_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient, IndexModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import _sealed

from audit_events.codec import ALL_TOKEN, event_to_document
from audit_events.storage import CHAIN_INDEX, EVENT_INDEXES
from audit_events.store_adapter import capabilities_of, chain_index_model
from auditstream.embedded import mongo_server
from producers.loadgen import generate_events

RESULTS = Path(__file__).parent / "results"
BATCH = 500
_T = [("occurred_at", -1), ("_id", -1)]
Indexes = list[tuple[str, list[tuple[str, int]]]]
# The events indexes before issue 18's change (audit_events/storage.py EVENT_INDEXES
# and query_api/services.py READ_INDEXES at f9abb56^).
BEFORE: Indexes = [
    ("tenant_time", [("tenant", 1), *_T]),
    ("tenant_action_time", [("tenant", 1), ("action", 1), *_T]),
    ("tenant_actor_time", [("tenant", 1), ("actor.id", 1), *_T]),
    ("tenant_target_time", [("tenant", 1), ("targets.type", 1), ("targets.id", 1), *_T]),
    ("tenant_search_time", [("tenant", 1), ("search", 1), *_T]),
    ("api_actor_type_time", [("tenant", 1), ("actor.type", 1), *_T]),
    ("api_outcome_time", [("tenant", 1), ("outcome", 1), *_T]),
    ("api_crud_time", [("tenant", 1), ("crud", 1), *_T]),
    ("api_source_time", [("tenant", 1), ("source.service", 1), *_T]),
    ("api_target_id_time", [("tenant", 1), ("targets.id", 1), *_T]),
]


PREVIOUS: Indexes = [
    ("tenant_time", [("tenant", 1), *_T]),
    ("tenant_action_time", [("tenant", 1), ("action", 1), *_T]),
    ("tenant_actor_time", [("tenant", 1), ("actor.id", 1), *_T]),
    ("api_target_id_time", [("tenant", 1), ("targets.id", 1), *_T]),
    ("tenant_search_time", [("tenant", 1), ("search", 1), *_T]),
]


# A design not shipped: tenant_search_time ascending (SecantusDB inverts the bytes of
# every descending key part of every entry; MongoDB walks either direction).
ASC_INDEX: Indexes = [
    ("tenant_search_time_asc", [("tenant", 1), ("search", 1), ("occurred_at", 1), ("_id", 1)])
]


def _is_token(term: str) -> bool:
    return term == ALL_TOKEN or term[:2] in ("c:", "a:", "t:")


def with_id_words(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the words of its actor and target ids (what the code stores
    now; so ``before`` and ``previous`` keep them whatever the words become)."""
    ids = [(doc.get("actor") or {}).get("id") or ""]
    ids += [t.get("id") or "" for t in doc.get("targets") or ()]
    extra = {w for i in ids for w in re.findall(r"[^\W_]+", i.lower()) if len(w) <= 64}
    words = sorted({t for t in doc["search"] if not _is_token(t)} | extra)
    return {**doc, "search": words + [t for t in doc["search"] if _is_token(t)]}


def words_only(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as the code before the search tokens stored it (the words of ids too)."""
    return {**doc, "search": [t for t in with_id_words(doc)["search"] if not _is_token(t)]}


def no_id_words(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without the words only an actor or target id gives (a design)."""
    actor = doc.get("actor") or {}
    parts = [doc["action"], doc.get("description") or "", actor.get("name") or ""]
    parts += [t.get("name") or "" for t in doc.get("targets") or ()]
    keep = {w for p in parts for w in re.findall(r"[^\W_]+", p.lower())}
    return {**doc, "search": [t for t in doc["search"] if _is_token(t) or t in keep]}


def tokens_only(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` without any ``q`` word (a design)."""
    return {**doc, "search": [t for t in doc["search"] if _is_token(t)]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _values(doc: Any, path: str) -> int:
    """How many index keys ``doc`` gives ``path`` (arrays: one per element)."""
    head, _, rest = path.partition(".")
    value = doc.get(head) if isinstance(doc, dict) else None
    if isinstance(value, list):
        return max(1, sum(_values({head: v}, path) for v in value)) if value else 1
    return _values(value, rest) if rest and isinstance(value, dict) else 1


def entries_per_event(indexes: Indexes, docs: list[dict[str, Any]]) -> float:
    """Index entries one event costs: ``_id``, then per index its multikey fan-out
    (each of these indexes has at most one array path)."""
    total = 0
    for doc in docs:
        total += 1
        for _, keys in indexes:
            total += max(_values(doc, field) for field, _ in keys)
    return total / len(docs)


async def insert_cpu(
    client: AsyncMongoClient[dict[str, Any]],
    pid: int,
    name: str,
    indexes: Indexes,
    docs: list[dict[str, Any]],
    chain: bool,
) -> float:
    coll = client.bench[name]
    await coll.drop()
    if indexes or chain:
        models = [IndexModel(k, name=n) for n, k in indexes]
        if chain:
            models.append(chain_index_model(await capabilities_of(coll)))
        await coll.create_indexes(models)
    sealed = [dict(d) for d in docs]
    before = cpu_seconds(pid)
    for i in range(0, len(sealed), BATCH):
        await coll.insert_many(sealed[i : i + BATCH], ordered=True)
    spent = cpu_seconds(pid) - before
    await coll.drop()
    return spent / len(docs) * 1000 * 1000  # ms per 1,000 events


async def run(count: int, rounds: int, only: list[str] | None = None) -> dict[str, Any]:
    events = generate_events(count, tenants=50, seed=3)
    docs = _sealed([event_to_document(e, datetime.now(UTC)) for e in events])
    sets: dict[str, tuple[Indexes, bool]] = {
        "before": (BEFORE, True),
        "previous": (PREVIOUS, True),
        "after": (EVENT_INDEXES, True),
        "none": ([], False),
        "no_id_words": (EVENT_INDEXES, True),
        "no_id_words_asc": (ASC_INDEX, True),
        "tokens_only": (EVENT_INDEXES, True),
    }
    if only:
        sets = {label: sets[label] for label in ("before", "after", *only) if label in sets}
    old = [words_only(d) for d in docs]
    shapes = {
        "before": old,
        "previous": old,
        "no_id_words": [no_id_words(d) for d in docs],
        "no_id_words_asc": [no_id_words(d) for d in docs],
        "tokens_only": [tokens_only(d) for d in docs],
    }
    server = mongo_server(Path(tempfile.mkdtemp(prefix="bench-store-cpu-")))
    server.start()
    assert server.proc is not None
    spent: dict[str, list[float]] = {label: [] for label in sets}
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.url, tz_aware=True)
        await insert_cpu(client, server.proc.pid, "warmup", EVENT_INDEXES, docs[:BATCH], True)
        for r in range(rounds):
            for label, (indexes, chain) in sets.items():
                these = shapes.get(label, docs)
                ms = await insert_cpu(client, server.proc.pid, label, indexes, these, chain)
                spent[label].append(ms)
                print(f"  round {r + 1} {label}: {ms:.0f} ms CPU per 1,000 events", flush=True)
        await client.close()
    finally:
        server.stop()
    out: dict[str, Any] = {"events": count, "rounds": rounds, "sets": {}}
    for label, (indexes, chain) in sets.items():
        everything = indexes + ([CHAIN_INDEX] if chain else [])
        out["sets"][label] = {
            "indexes": 1 + len(everything),
            "entries_per_event": round(entries_per_event(everything, shapes.get(label, docs)), 1),
            "store_cpu_ms_per_1000": round(statistics.median(spent[label]), 0),
            "rounds_ms": [round(x) for x in spent[label]],
        }
    s = out["sets"]
    for label in ("previous", "after", "no_id_words", "no_id_words_asc", "tokens_only"):
        if label not in s:
            continue
        out[f"{label}_vs_before"] = round(
            s[label]["store_cpu_ms_per_1000"] / s["before"]["store_cpu_ms_per_1000"], 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sets", default="", help="comma-separated sets besides before and after (default: all)"
    )
    args = parser.parse_args()
    only = [x for x in args.sets.split(",") if x]
    result = asyncio.run(run(args.events, args.rounds, only or None))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "store_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    for label, row in result["sets"].items():
        print(
            f"{label:>7}: {row['indexes']:>2} indexes, {row['entries_per_event']:>5} entries"
            f"/event, {row['store_cpu_ms_per_1000']:>5.0f} ms store CPU per 1,000 events"
        )
    print(f"store CPU per 1,000 events, after / before: {result['after_vs_before']}")
    for label, what in (
        ("previous", "issue 18's first step"),
        ("no_id_words", "design not shipped"),
        ("no_id_words_asc", "design not shipped"),
        ("tokens_only", "design not shipped"),
    ):
        if label + "_vs_before" in result:
            print(f"  ({what}) {label} / before: {result[label + '_vs_before']}")


if __name__ == "__main__":
    main()
