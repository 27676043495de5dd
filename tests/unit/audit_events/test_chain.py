"""The tenant chain in the core: hashing, checkpoints and the verifier's verdicts."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from audit_events import chain
from audit_events.codec import content_hash, event_to_document
from audit_events.schema import AuditEvent

pytestmark = pytest.mark.unit
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def build(n: int, tenant: str = "acme") -> list[dict[str, Any]]:
    docs, prev = [], chain.GENESIS
    for i in range(n):
        event = AuditEvent(
            id=f"e{i:04d}",
            tenant=tenant,
            action="invoice.update",
            occurred_at=T0 + timedelta(seconds=i),
            actor={"id": f"user{i}"},
            targets=[{"type": "invoice", "id": str(i)}],
            metadata={"n": i, "f": 1.5},
        )
        doc = event_to_document(event, T0)
        prev = chain.seal(doc, i + 1, prev)
        docs.append(doc)
    return docs


KEY_PRIVATE, KEY_PUBLIC = chain.generate_keypair()


def checkpoint(doc: dict[str, Any]) -> dict[str, Any]:
    key = chain.load_private_key(KEY_PRIVATE)
    return chain.sign_checkpoint(key, doc["tenant"], doc["seq"], doc["hash"], T0)


async def verify(docs: list[dict[str, Any]], cps: list[dict[str, Any]] | None = None) -> Any:
    ordered = sorted(docs, key=lambda d: (d["seq"], d["_id"]))
    return await chain.verify_chain(
        "acme", chain.aiter_list(ordered), cps or [], chain.load_public_key(KEY_PUBLIC)
    )


def test_link_and_genesis_are_sha256_of_raw_digests() -> None:
    import hashlib

    content = hashlib.sha256(b"x").hexdigest()
    expected = hashlib.sha256(bytes(32) + bytes.fromhex(content)).hexdigest()
    assert chain.link(chain.GENESIS, content) == expected


def test_document_hash_equals_hash_of_the_event_as_received() -> None:
    event = AuditEvent(tenant="acme", action="a.b", metadata={"x": [1, 2.5, None, "é"]})
    doc = event_to_document(event, T0)
    assert chain.document_content_hash(doc) == content_hash(event)
    # naive datetimes (a client without tz_aware) read as UTC
    naive = {**doc, "occurred_at": doc["occurred_at"].replace(tzinfo=None)}
    assert chain.document_content_hash(naive) == content_hash(event)


async def test_untouched_chain_verifies() -> None:
    docs = build(20)
    report = await verify(docs, [checkpoint(docs[9]), checkpoint(docs[19])])
    assert report.ok and report.checked == 20 and report.head_seq == 20
    assert report.checkpoints == 2 and report.unsigned_tail == 0


async def test_unsigned_tail_is_reported() -> None:
    docs = build(12)
    report = await verify(docs, [checkpoint(docs[9])])
    assert report.ok and report.unsigned_tail == 2


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        ("edit", 7, "edited"),
        ("delete", 7, "deleted"),
        ("swap", 7, "reordered"),
        ("insert", 7, "inserted"),
        ("truncate", 18, "truncated"),
        ("rehash_all", 10, "rewritten"),
    ],
)
async def test_tamper_matrix(tamper: str, seq: int, reason: str) -> None:
    docs = build(20)
    cps = [checkpoint(docs[9]), checkpoint(docs[19])]
    if tamper == "edit":
        docs[6]["actor"] = {"id": "mallory", "type": "user"}
    elif tamper == "delete":
        del docs[6]
    elif tamper == "swap":
        docs[6]["seq"], docs[7]["seq"] = 8, 7
    elif tamper == "insert":
        forged = copy.deepcopy(docs[6])
        forged["_id"], forged["actor"] = "forged", {"id": "mallory", "type": "user"}
        chain.seal(forged, 7, docs[5]["hash"])
        docs.append(forged)
    elif tamper == "truncate":
        docs = docs[:17]
    elif tamper == "rehash_all":  # edit seq 5 and recompute every later hash
        docs[4]["description"] = "nothing happened"
        prev = docs[3]["hash"]
        for doc in docs[4:]:
            prev = chain.seal(doc, doc["seq"], prev)
    report = await verify(docs, cps)
    assert (report.ok, report.first_bad_seq, report.reason) == (False, seq, reason)


async def test_erased_document_keeps_verifying_with_its_stored_content_hash() -> None:
    docs = build(5)
    for name in chain.ERASED_FIELDS:
        docs[2].pop(name, None)
    docs[2]["erased"] = {"by": "admin", "at": T0, "event_id": "x", "reason": "gdpr"}
    report = await verify(docs, [checkpoint(docs[4])])
    assert report.ok and report.erased == 1


async def test_forged_and_keyless_checkpoints_are_rejected() -> None:
    docs = build(5)
    cp = checkpoint(docs[4])
    forged = {**cp, "hash": docs[3]["hash"]}
    report = await verify(docs, [forged])
    assert (report.ok, report.reason, report.first_bad_seq) == (False, "bad_checkpoint", 5)
    keyless = await chain.verify_chain("acme", chain.aiter_list(docs), [cp], None)
    assert keyless.reason == "bad_checkpoint"


def test_original_view_undoes_corrections() -> None:
    view = {
        "id": "e1",
        "description": "new",
        "actor": {"id": "bob"},
        "corrections": [
            {"set": {"description": "mid"}, "previous": {"description": None}},
            {
                "set": {"description": "new", "actor": {"id": "bob"}},
                "previous": {"description": "mid", "actor": {"id": "alice"}},
            },
        ],
    }
    original = chain.original_view(view)
    assert "description" not in original and original["actor"] == {"id": "alice"}


@pytest.mark.parametrize(
    "seqs",
    [
        [],
        [1],
        [1, 2],
        list(range(1, 18)),
        list(range(1, 1001)),
        [*range(1, 11), *range(15, 41)],  # a gap: a damaged chain
        list(range(2, 10)),  # seq 1 deleted
    ],
)
async def test_find_head_with_point_lookups_finds_the_highest_seq(seqs: list[int]) -> None:
    from audit_events.chain import find_head

    stored = set(seqs)
    ranges: list[int] = []

    async def first_from(k: int) -> dict[str, int] | None:
        ranges.append(k)
        return next(({"seq": s} for s in sorted(stored) if s >= k), None)

    async def exact(k: int) -> dict[str, int] | None:
        return {"seq": k} if k in stored else None

    head = await find_head(first_from, exact)
    assert (head["seq"] if head else 0) == max(seqs, default=0)
    if seqs and seqs == list(range(1, len(seqs) + 1)):
        # intact chain: one range probe, just past the head (cheap on SecantusDB)
        assert ranges == [len(seqs) + 1]
