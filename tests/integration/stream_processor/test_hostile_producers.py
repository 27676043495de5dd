"""Hostile producers writing the events topic directly (aiokafka), against a real worker.

Real Tansu, SecantusDB and redis-server; the worker is a real ``auditstream
processor`` child process. Every bad record goes to the DLQ with its reason, the
worker keeps going (the events after them are stored), nothing of one tenant
reaches another, and every tenant's chain still verifies (with the control-event
proofs). The attacks already covered elsewhere (poison pills, forged control
events without a proof: test_processor_resilience.py, test_control_proof.py) are
not repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pymongo.asynchronous.collection import AsyncCollection

from audit_events import chain
from audit_events.chain.checkpoints import key_id, load_private_key, load_public_key
from audit_events.settings import AuditSettings
from query_api.verify import verify_tenant
from tests.conftest import CONTROL_PRIVATE, CONTROL_PUBLIC, ProcessorProcess
from tests.helpers import event_body, eventually, exited
from tests.integration.stream_processor.test_processor_resilience import Kafka

pytestmark = pytest.mark.integration

KEY_REASON = "record key {} is not the tenant 'acme'"


def erasure(tenant: str, target: str, control_id: str) -> dict[str, Any]:
    """An erasure signed with the API's control key, as DELETE /v1/events/{id} issues it."""
    fields = {
        "id": control_id,
        "tenant": tenant,
        "action": chain.ERASED_ACTION,
        "occurred_at": "2026-01-01T00:00:00Z",
        "actor": {"id": "admin", "type": "admin"},
        "targets": [{"type": "audit_event", "id": target}],
        "description": "gdpr",
    }
    return chain.sign_control(load_private_key(CONTROL_PRIVATE), fields)


def attacks() -> list[tuple[str, Any, bytes | None, dict[str, Any], str | None]]:
    """(name, value, key, send options, DLQ reason prefix or None when stored/ignored)."""
    theirs = erasure("globex", "globex-000000", "erase-g0")  # valid, applied first
    return [
        ("valid erasure", theirs, b"globex", {}, None),
        ("the same erasure replayed", theirs, b"globex", {}, None),  # a duplicate: no-op
        ("replayed under another key", theirs, b"acme", {}, "record key b'acme'"),
        ("signature moved to acme", {**theirs, "tenant": "acme"}, b"acme", {}, "forged control"),
        # authentic for acme, aimed at globex's id: looked up as acme's, a no-op
        ("cross-tenant target", erasure("acme", "globex-000001", "erase-x"), b"acme", {}, None),
        ("key of another tenant", event_body(10), b"globex", {}, KEY_REASON.format("b'globex'")),
        ("null key", event_body(11), None, {}, KEY_REASON.format("null")),
        ("key case", event_body(12), b"ACME", {}, KEY_REASON.format("b'ACME'")),
        # headers claiming a tenant or trust are not read: an ordinary acme event
        ("headers", event_body(13), b"acme", {"headers": [("tenant", b"globex")]}, None),
        ("trust header", event_body(14), b"acme", {"headers": [("x-trust", b"api")]}, None),
        # duplicate JSON keys: the last wins, the same for the API and the worker
        (
            "duplicate keys",
            b'{"id":"dk","tenant":"globex","tenant":"acme","action":"a.b"}',
            b"acme",
            {},
            None,
        ),
        (
            "NaN",
            b'{"id":"nan","tenant":"acme","action":"a.b","metadata":{"x":NaN}}',
            b"acme",
            {},
            "invalid event: metadata: Value error, nan at x is not a finite number",
        ),
        (
            "1e999",
            b'{"id":"inf","tenant":"acme","action":"a.b","changes":{"f":{"new":1e999}}}',
            b"acme",
            {},
            "invalid event: changes.f.new",
        ),
        (
            "same id, other content",
            event_body(0, description="rewritten"),
            b"acme",
            {},
            "duplicate id with different content",
        ),
        ("globex's id in acme", event_body(0, id="globex-000000"), b"acme", {}, None),
    ]


async def test_hostile_records_are_dead_lettered_the_rest_stored_chains_verify(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
) -> None:
    worker = processors()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()

    async def send(value: Any, key: bytes | None, **options: Any) -> tuple[int, int]:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        meta = await producer.send_and_wait(settings.topic_events, raw, key=key, **options)
        return meta.partition, meta.offset

    sent: dict[tuple[int, int], tuple[str, str | None]] = {}
    try:
        for tenant in ("acme", "globex"):
            for n in range(3):
                await send(event_body(n, tenant), tenant.encode())
        for name, value, key, options, reason in attacks():
            sent[await send(value, key, **options)] = (name, reason)
        for tenant in ("acme", "globex"):
            await send(event_body(99, tenant), tenant.encode())
    finally:
        await producer.stop()

    wanted = {name: reason for name, reason in sent.values() if reason}
    async with Kafka(settings) as kafka:  # every record handled: stored or dead-lettered
        await eventually(kafka.fully_committed, 120, 0.5, abort=exited(worker.proc))
        dead = await kafka.dead_letters(len(wanted), timeout=30)
    assert worker.proc is not None and worker.proc.poll() is None
    letters = {(d["source"]["partition"], d["source"]["offset"]): d for d in dead}
    got = {sent[pos][0]: d["reason"] for pos, d in letters.items()}
    assert set(got) == set(wanted), got
    for name, reason in wanted.items():
        assert got[name].startswith(reason), (name, got[name])

    ids: dict[str, set[str]] = {}
    async for doc in store.find({}, {"tenant": 1, "id": 1}):
        ids.setdefault(doc["tenant"], set()).add(doc["id"])
    assert ids == {
        "acme": {
            *(f"acme-{n:06d}" for n in (0, 1, 2, 13, 14, 99)),
            "erase-x",
            "dk",
            "globex-000000",
        },
        "globex": {"globex-000000", "globex-000001", "globex-000002", "globex-000099", "erase-g0"},
    }
    erased = {d["_id"] async for d in store.find({"erased": {"$exists": True}}, {"_id": 1})}
    assert erased == {"globex/globex-000000"}  # by its own valid erasure, once
    original = await store.find_one({"_id": "acme/acme-000000"})
    assert original is not None and original["description"] == "event number 0"

    keys = {key_id(CONTROL_PUBLIC): load_public_key(CONTROL_PUBLIC)}
    for tenant in ids:
        report = await verify_tenant(store, tenant, [], CONTROL_PUBLIC, control_keys=keys)
        assert report.ok and report.head_seq == len(ids[tenant]), report


class _RawName(str):
    """A header name whose wire bytes are not UTF-8 (the Kafka protocol says they are)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe-not-utf-8"


async def test_a_header_name_that_is_not_utf8_does_not_stop_the_partition(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # aiokafka's record parser decodes header names as UTF-8 and raises: the fetch of
    # the whole partition failed again and again, nothing after the record was stored.
    from aiokafka.producer import message_accumulator
    from aiokafka.producer import producer as producer_module
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    for module in (message_accumulator, producer_module):  # the builder that calls encode()
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
    worker = processors()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        bad = orjson.dumps(event_body(0))
        await producer.send_and_wait(
            settings.topic_events, bad, key=b"acme", headers=[(_RawName("h"), b"v")]
        )
        for n in (1, 2):
            await producer.send_and_wait(
                settings.topic_events, orjson.dumps(event_body(n)), key=b"acme"
            )
    finally:
        await producer.stop()

    async def all_stored() -> bool:  # headers are never read: it is an ordinary event
        ids = ["acme-000000", "acme-000001", "acme-000002"]
        return await store.count_documents({"id": {"$in": ids}}) == 3

    await eventually(all_stored, 60, 0.5, what="all three stored", abort=exited(worker.proc))
    assert worker.proc is not None and worker.proc.poll() is None


async def test_compressed_batches_are_read_and_an_unreadable_one_is_dead_lettered(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Java clients compress with lz4, zstd or snappy; aiokafka reads those only with
    # cramjam: without it every fetch of the partition raised and the worker crashed.
    # A batch whose compressed bytes are garbage raised the same way.
    from aiokafka.producer import message_accumulator
    from aiokafka.producer import producer as producer_module
    from aiokafka.record import default_records

    worker = processors()
    wanted = set()
    for n, codec in enumerate(("gzip", "lz4", "zstd", "snappy")):
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", compression_type=codec
        )
        await producer.start()
        try:
            body = event_body(n, id=f"{codec}-{n}")
            await producer.send_and_wait(settings.topic_events, orjson.dumps(body), key=b"acme")
            wanted.add(body["id"])
        finally:
            await producer.stop()
    for module in (message_accumulator, producer_module):
        builder = default_records._DefaultRecordBatchBuilderPy
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", builder)
    monkeypatch.setattr(default_records, "gzip_encode", lambda data, **_: b"not gzip at all")
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", compression_type="gzip"
    )
    await producer.start()
    try:
        garbage = await producer.send_and_wait(
            settings.topic_events, orjson.dumps(event_body(7, id="lost")), key=b"acme"
        )
    finally:
        await producer.stop()
    monkeypatch.undo()
    async with Kafka(settings) as kafka:
        await kafka.send([(b"acme", orjson.dumps(event_body(8, id="after")))])
        wanted.add("after")

        async def stored() -> bool:
            return {d["id"] async for d in store.find({}, {"id": 1})} == wanted

        await eventually(stored, 60, 0.5, what="every readable event", abort=exited(worker.proc))
        (letter,) = await kafka.dead_letters(1, timeout=30)
    assert letter["reason"].startswith("unreadable record batch"), letter["reason"]
    assert (letter["source"]["partition"], letter["source"]["offset"]) == (
        garbage.partition,
        garbage.offset,
    )
    assert worker.proc is not None and worker.proc.poll() is None


async def test_a_batch_lying_about_its_record_count_loses_no_later_event(
    processors: Callable[..., ProcessorProcess],
    store: AsyncCollection[dict[str, Any]],
    settings: AuditSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Three records under a header claiming one: Tansu stores it (Apache Kafka refuses
    # it) and gives the next batch the offsets these records claim; the worker took
    # them, committed past them and never stored the next producer's events.
    from aiokafka.producer import message_accumulator
    from aiokafka.producer import producer as producer_module
    from aiokafka.record import default_records
    from aiokafka.record.util import calc_crc32c

    class Lying(default_records._DefaultRecordBatchBuilderPy):  # type: ignore[misc]
        def build(self) -> bytearray:
            raw = bytearray(super().build())
            raw[23:27] = (0).to_bytes(4, "big")  # last offset delta: "one record"
            raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")
            return raw

    worker = processors()
    with monkeypatch.context() as patch:
        for module in (message_accumulator, producer_module):
            patch.setattr(module, "DefaultRecordBatchBuilder", Lying)
        liar = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await liar.start()
        try:
            sent = [
                await liar.send(
                    settings.topic_events, orjson.dumps(event_body(n)), key=b"acme", partition=0
                )
                for n in range(3)
            ]
            await asyncio.gather(*sent)
        finally:
            await liar.stop()
    honest = [(b"acme", orjson.dumps(event_body(n, id=f"after-{n}"))) for n in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in honest:
            await producer.send_and_wait(settings.topic_events, value, key=key, partition=0)
    finally:
        await producer.stop()

    async def after_stored() -> bool:
        ids = ["after-0", "after-1", "after-2"]
        return await store.count_documents({"id": {"$in": ids}}) == 3

    await eventually(after_stored, 60, 0.5, what="the events after it", abort=exited(worker.proc))
    async with Kafka(settings) as kafka:
        (letter,) = await kafka.dead_letters(1, timeout=30)
    assert letter["reason"].startswith("unreadable record batch"), letter["reason"]
    assert "offsets do not fit" in letter["reason"]
