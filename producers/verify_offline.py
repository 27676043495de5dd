"""Verify an exported NDJSON slice of a tenant chain — no database, no network.

Input: events as NDJSON (the API's JSON view, e.g. from ``GET /v1/events/export``
with tombstones, or raw stored documents), the tenant's signed checkpoints
(``GET /v1/checkpoints``: a JSON ``{"data": [...]}``, a JSON list, or NDJSON) and
the Ed25519 public keys: ``--public-key`` (repeatable) takes a base64 key, a file
holding one, or the JSON of ``GET /v1/verify/public-key`` (the current key and the
retired ones, so checkpoints signed before a key rotation still verify). Corrections are undone
with each record's ``previous`` values, so content hashes are recomputed from the
event as received; erased events (tombstones) keep their stored content hash.

A slice that starts after seq 1 is anchored on its first event's stored hash
(that event's content is still checked). Gaps are reported as deletions —
erased events must be exported as tombstones (``GET
/v1/events/export?format=ndjson&include_erased=true``) for a slice to verify,
and the report says so. A tombstone must be backed by its erasure event (the
``erased.event_id`` named in it, later in the chain, targeting it): when that
event is in the slice it is checked, and with ``--complete`` (the slice must
also reach the latest checkpoint) it must be there — so an event cannot be
turned into a tombstone to hide its content.

    python -m producers.verify_offline --events slice.ndjson \\
        --checkpoints checkpoints.json --public-key KEY_OR_FILE [--complete]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from audit_events.chain import (
    CORRECTED_ACTION,
    ERASED_ACTION,
    GENESIS,
    Report,
    aiter_list,
    document_content_hash,
    key_id,
    load_public_key,
    original_view,
    verify_chain,
)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """NDJSON, a JSON list, or ``{"data": [...]}``."""
    raw = path.read_bytes().strip()
    if raw.startswith((b"[", b"{")):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None  # NDJSON whose first line is an object
        if isinstance(value, list):
            return value
        if isinstance(value, dict) and isinstance(value.get("data"), list):
            return list(value["data"])
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]


async def verify_slice(
    events: Iterable[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    public_key: str | Iterable[str],
    *,
    complete: bool = False,
) -> list[Report]:
    """One report per tenant in ``events``; ``public_key``: one base64 key or several."""
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_tenant.setdefault(str(event.get("tenant")), []).append(original_view(event))
    b64s = [public_key] if isinstance(public_key, str) else list(public_key)
    key = {key_id(k): load_public_key(k) for k in b64s}
    reports = []
    for tenant, docs in sorted(by_tenant.items()):
        docs.sort(key=lambda d: (int(d.get("seq") or 0), str(d.get("id"))))
        report = await _verify_tenant(tenant, docs, checkpoints, key, complete)
        if report.ok:
            report = _check_tombstones(report, docs, complete)
        elif report.reason == "deleted":
            report.detail = f"{report.detail}; {GAP_HINT}"
        reports.append(report)
    return reports


GAP_HINT = (
    "exports leave erased events out unless made with include_erased=true "
    "(GET /v1/events/export?format=ndjson&include_erased=true); "
    "if it was made so, the event was deleted from the store"
)


def _check_tombstones(report: Report, docs: list[dict[str, Any]], complete: bool) -> Report:
    """Every tombstone is backed by the erasure event its ``erased`` record names."""
    by_id = {str(d.get("id")): d for d in docs}
    for doc in docs:
        record = doc.get("erased")
        if not record:
            continue
        seq, event_id = int(doc.get("seq") or 0), str(doc.get("id"))
        eraser_id = record.get("event_id") if isinstance(record, dict) else None
        eraser = by_id.get(str(eraser_id)) if eraser_id else None
        if not eraser_id:
            return report.fail(seq, "edited", f"tombstone {event_id} names no erasure event")
        if eraser is None:
            if complete:
                return report.fail(
                    seq,
                    "edited",
                    f"tombstone {event_id}: its erasure event {eraser_id} is not in the export",
                )
            continue  # after the end of this slice
        targets = {
            str(t.get("id")) for t in eraser.get("targets") or () if t.get("type") == "audit_event"
        }
        backs = (
            eraser.get("action") == ERASED_ACTION
            and not eraser.get("erased")
            and int(eraser.get("seq") or 0) > seq
            and (event_id in targets or doc.get("action") == CORRECTED_ACTION)
        )
        if not backs:
            return report.fail(
                seq, "edited", f"tombstone {event_id} is not backed by erasure event {eraser_id}"
            )
    return report


async def _verify_tenant(
    tenant: str,
    docs: list[dict[str, Any]],
    checkpoints: list[dict[str, Any]],
    key: Any,
    complete: bool,
) -> Report:
    first = docs[0]
    start_seq, prev = int(first.get("seq") or 0), GENESIS
    if start_seq > 1:  # anchor on the first event: check its content, trust its hash
        anchor = Report(tenant)
        try:
            content = (
                first.get("content_hash") if first.get("erased") else document_content_hash(first)
            )
        except ValueError as exc:
            return anchor.fail(start_seq, "edited", str(exc))
        if content != first.get("content_hash"):
            return anchor.fail(start_seq, "edited", "content differs from its content_hash")
        start_seq, prev, docs = start_seq + 1, str(first["hash"]), docs[1:]
    cps = [c for c in checkpoints if c.get("tenant") == tenant]
    return await verify_chain(
        tenant, aiter_list(docs), cps, key, start_seq=start_seq, prev_hash=prev, to_end=complete
    )


def read_public_keys(arg: str) -> list[str]:
    """Base64 keys from ``arg``: a key, a file holding one, or ``/v1/verify/public-key``'s JSON."""
    text = Path(arg).read_text().strip() if Path(arg).is_file() else arg.strip()
    if not text.startswith("{"):
        return [text]
    body = orjson.loads(text)
    retired = [str(r["public_key"]) for r in body.get("retired") or ()]
    return [str(body["public_key"]), *retired]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument(
        "--public-key",
        required=True,
        action="append",
        help="base64 key, a file holding one, or the JSON of GET /v1/verify/public-key "
        "(current + retired keys); repeatable",
    )
    parser.add_argument("--complete", action="store_true", help="must reach the last checkpoint")
    args = parser.parse_args(argv)
    keys = [k for arg in args.public_key for k in read_public_keys(arg)]
    reports = asyncio.run(
        verify_slice(
            read_json_lines(args.events),
            read_json_lines(args.checkpoints),
            keys,
            complete=args.complete,
        )
    )
    for r in reports:
        if r.ok:
            print(f"ok  {r.tenant}: {r.checked} events, {r.checkpoints} checkpoints matched")
        else:
            print(f"BAD {r.tenant}: first bad seq {r.first_bad_seq}: {r.reason} ({r.detail})")
    return 0 if reports and all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
