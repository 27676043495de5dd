"""Masking's cost per event in the processor (issue 17, "Measure").

Decodes N realistic records (Step 2) and runs the masking step's pure part
(``RuleCache.mask``, what :class:`stream_processor.masking.MaskedWrite` does
before the seal) with no rules for the tenant and with four rules (hash,
redact, truncate_ip, a changes field); the rules are cached, as in a running
worker. Prints microseconds per event and the ratios.

    .venv/bin/python bench/bench_masking.py [--events 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from audit_events.masking import MaskingRules, new_version
from audit_events.schema import DEFAULT_LIMITS
from stream_processor.decode import decode
from stream_processor.masking import RuleCache, newest_received
from stream_processor.records import Record

RULES = MaskingRules.model_validate(
    {
        "rules": [
            {"path": "metadata.user.email", "action": "hash"},
            {"path": "actor.name", "action": "redact"},
            {"path": "context.ip", "action": "truncate_ip"},
            {"path": "changes.phone", "action": "hash"},
        ]
    }
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def records(n: int) -> list[Record]:
    ts = int((T0 + timedelta(minutes=1)).timestamp() * 1000)
    out = []
    for i in range(n):
        event = {
            "id": f"ev-{i:08d}",
            "tenant": "acme",
            "action": "user.update",
            "actor": {"id": f"u-{i % 97}", "type": "user", "name": f"User Number {i % 97}"},
            "targets": [{"type": "user", "id": f"u-{i % 13}"}],
            "context": {"ip": f"198.51.100.{i % 250}", "user_agent": "Mozilla/5.0"},
            "metadata": {"user": {"email": f"user{i % 97}@example.com"}, "plan": "pro", "n": i},
            "changes": {"phone": {"old": f"+44 20 7946 {i % 10000:04d}", "new": None}},
        }
        out.append(Record("audit.events", 0, i, ts, b"acme", orjson.dumps(event)))
    return out


def per_event_us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    n = parser.parse_args().events
    recs = records(n)

    started = time.perf_counter()
    docs: list[dict[str, Any]] = []
    for r in recs:
        doc = decode(r, DEFAULT_LIMITS, 1 << 20)
        assert isinstance(doc, dict), doc
        docs.append(doc)
    decode_us = per_event_us(time.perf_counter() - started, n)

    async def no_rules(tenants: list[str]) -> list[dict[str, Any]]:
        return []

    version = new_version("acme", RULES, version=1, now=T0, delay_seconds=0, by="bench")

    async def four_rules(tenants: list[str]) -> list[dict[str, Any]]:
        return [version]

    results = {}
    for name, load in (("no rules", no_rules), ("4 rules", four_rules)):
        cache = RuleCache(load, b"bench-secret", cache_seconds=60, delay_seconds=10)
        await cache.refresh(newest_received(docs))  # a running worker has them cached
        started = time.perf_counter()
        for i in range(0, n, 500):  # batches of 500, as the pipeline flushes them
            chunk = docs[i : i + 500]
            await cache.refresh(newest_received(chunk))
            cache.mask(chunk)
        results[name] = per_event_us(time.perf_counter() - started, n)

    print(f"events: {n}")
    print(f"decode + validate (Step 2):     {decode_us:8.2f} us/event")
    for name, us in results.items():
        print(
            f"masking, {name:9s}:           {us:8.2f} us/event  ({us / decode_us:6.1%} of decode)"
        )
    ratio = (decode_us + results["4 rules"]) / (decode_us + results["no rules"])
    print(f"decode+mask with 4 rules / without: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
