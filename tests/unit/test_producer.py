"""The async producer against a fake transport: validation, ordering, spool, backpressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from audit_events.codec import encode_event
from audit_events.schema import AuditEvent
from producers import (
    AuditProducer,
    BufferFull,
    DeliveryFailed,
    InvalidEvent,
    ProducerConfig,
    SpoolFull,
    SyncAuditProducer,
    build_event,
)

pytestmark = pytest.mark.unit


class FakeKafka:
    """A transport that is up or down at the test's command and records what it got."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.sent: list[tuple[bytes, bytes]] = []
        self.hold: asyncio.Event | None = None
        self.connects = 0

    async def connect(self) -> None:
        if not self.up:
            raise ConnectionError("broker down")
        self.connects += 1

    async def send(
        self, messages: Sequence[tuple[bytes, bytes]], timeout: float
    ) -> list[tuple[int, int]]:
        if self.hold is not None:
            await self.hold.wait()
        if not self.up:
            raise ConnectionError("broker down")
        first = len(self.sent)
        self.sent.extend(messages)
        return [(0, first + n) for n in range(len(messages))]

    async def close(self) -> None:
        pass

    def actions(self) -> list[str]:
        return [orjson.loads(v)["action"] for _, v in self.sent]


def config(tmp_path: Path | None = None, **kw: object) -> ProducerConfig:
    base: dict[str, object] = {
        "bootstrap": "fake:9092",
        "reconnect_initial": 0.01,
        "reconnect_max": 0.02,
        "delivery_timeout": 2.0,
    }
    if tmp_path is not None:
        base["spool_path"] = tmp_path / "spool.db"
    base.update(kw)
    return ProducerConfig(**base)  # type: ignore[arg-type]


async def wait_until(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def test_build_event_conveniences() -> None:
    ev = build_event(
        tenant="acme",
        action="invoice.update",
        actor="alice",
        target=("invoice", "42", "Invoice 42"),
        changes={"total": (10, 12)},
    )
    assert ev.actor is not None and ev.actor.id == "alice" and ev.actor.type == "user"
    assert [(t.type, t.id, t.name) for t in ev.targets] == [("invoice", "42", "Invoice 42")]
    assert ev.changes["total"].old == 10 and ev.changes["total"].new == 12
    same = build_event(ev)
    assert same is ev


def test_invalid_event_names_each_field() -> None:
    with pytest.raises(InvalidEvent) as info:
        build_event(tenant="bad tenant!", actor={"type": "user"})
    assert info.value.fields == ["tenant", "action", "actor.id"]
    assert "tenant:" in str(info.value) and "action: Field required" in str(info.value)


async def test_emit_validates_before_sending_and_keys_by_tenant() -> None:
    kafka = FakeKafka()
    async with AuditProducer(config(service="billing"), kafka) as producer:
        with pytest.raises(InvalidEvent, match="action"):
            await producer.emit(tenant="acme")
        assert kafka.sent == []
        receipt = await producer.emit(tenant="acme", action="invoice.create", id="evt-1")
        assert receipt.id == "evt-1" and receipt.status == "acknowledged"
        assert (receipt.partition, receipt.offset) == (0, 0)
    [(key, value)] = kafka.sent
    assert key == b"acme"
    assert orjson.loads(value)["source"] == {"service": "billing"}
    sent = AuditEvent.model_validate_json(value)
    assert value == encode_event(sent)


async def test_emit_nowait_keeps_order_and_flush_waits_for_acks() -> None:
    kafka = FakeKafka()
    async with AuditProducer(config(chunk_size=7), kafka) as producer:
        ids = [producer.emit_nowait(tenant="acme", action=f"a.n{i}") for i in range(50)]
        await producer.flush(5)
        assert producer.stats().acknowledged == 50
    assert kafka.actions() == [f"a.n{i}" for i in range(50)]
    assert len(set(ids)) == 50


async def test_buffer_full_without_spool_raises() -> None:
    kafka = FakeKafka()
    kafka.hold = asyncio.Event()
    async with AuditProducer(config(buffer_size=3, chunk_size=1), kafka) as producer:
        producer.emit_nowait(tenant="acme", action="a.first")
        await asyncio.sleep(0.05)  # the first is in flight, held
        for i in range(3):
            producer.emit_nowait(tenant="acme", action=f"a.b{i}")
        with pytest.raises(BufferFull):
            producer.emit_nowait(tenant="acme", action="a.overflow")
        kafka.hold.set()
        await producer.flush(5)
    assert kafka.actions() == ["a.first", "a.b0", "a.b1", "a.b2"]


async def test_unreachable_kafka_without_spool_fails_start() -> None:
    with pytest.raises(DeliveryFailed, match="unreachable"):
        await AuditProducer(config(), FakeKafka(up=False)).start()


async def test_broker_down_spools_then_drains_in_order(tmp_path: Path) -> None:
    kafka = FakeKafka(up=False)
    producer = AuditProducer(config(tmp_path, chunk_size=4), kafka)
    await producer.start()
    receipt = await producer.emit(tenant="acme", action="a.awaited")
    assert receipt.status == "spooled"
    for i in range(9):
        producer.emit_nowait(tenant="acme", action=f"a.n{i}")
    await producer.flush(5)
    assert producer.spool_size == 10 and producer.stats().spool_bytes > 0
    assert kafka.sent == []

    kafka.up = True
    producer.emit_nowait(tenant="acme", action="a.after")
    await producer.wait_spool_empty(10)
    await producer.close()
    assert kafka.actions() == ["a.awaited", *(f"a.n{i}" for i in range(9)), "a.after"]
    stats = producer.stats()
    assert (stats.spooled, stats.drained, stats.acknowledged) == (11, 11, 11)


async def test_unacknowledged_chunk_goes_to_the_front_of_the_spool(tmp_path: Path) -> None:
    kafka = FakeKafka()
    kafka.hold = asyncio.Event()
    producer = AuditProducer(config(tmp_path, buffer_size=2, chunk_size=2), kafka)
    await producer.start()
    producer.emit_nowait(tenant="acme", action="a.0")
    producer.emit_nowait(tenant="acme", action="a.1")
    await asyncio.sleep(0.05)  # a.0, a.1 in flight
    for i in range(2, 5):  # a.4 overflows: a.2..a.4 go to the spool
        producer.emit_nowait(tenant="acme", action=f"a.{i}")
    assert producer.spool_size == 3
    kafka.up = False
    kafka.hold.set()  # the in-flight chunk fails
    await wait_until(lambda: producer.spool_size == 5)
    kafka.up = True
    await producer.wait_spool_empty(10)
    await producer.close()
    assert kafka.actions() == [f"a.{i}" for i in range(5)]


async def test_full_spool_raises_and_keeps_what_it_has(tmp_path: Path) -> None:
    kafka = FakeKafka(up=False)
    producer = AuditProducer(config(tmp_path, buffer_size=2, spool_max_events=4), kafka)
    await producer.start()
    for i in range(4):
        producer.emit_nowait(tenant="acme", action=f"a.{i}")
    await producer.flush(5)
    assert producer.spool_size == 4
    producer.emit_nowait(tenant="acme", action="a.4")
    producer.emit_nowait(tenant="acme", action="a.5")
    with pytest.raises(SpoolFull, match="full"):
        producer.emit_nowait(tenant="acme", action="a.6")
    kafka.up = True
    await producer.wait_spool_empty(10)
    await producer.close()
    assert kafka.actions() == [f"a.{i}" for i in range(6)]


async def test_spool_survives_a_restart_of_the_producer(tmp_path: Path) -> None:
    first = AuditProducer(config(tmp_path), FakeKafka(up=False))
    await first.start()
    for i in range(3):
        first.emit_nowait(tenant="acme", action=f"a.{i}")
    await first.close()
    assert first.spool_size == 3

    kafka = FakeKafka()
    async with AuditProducer(config(tmp_path), kafka) as second:
        await second.wait_spool_empty(10)
    assert kafka.actions() == ["a.0", "a.1", "a.2"]


def test_sync_facade_is_thread_safe() -> None:
    kafka = FakeKafka()
    with SyncAuditProducer(config(), transport=kafka, close_at_exit=False) as producer:
        receipt = producer.emit(tenant="acme", action="a.sync", id="evt-sync")
        assert receipt.status == "acknowledged"
        with pytest.raises(InvalidEvent, match="tenant"):
            producer.emit_nowait(action="a.no-tenant")

        def work(n: int) -> None:
            for i in range(100):
                producer.emit_nowait(tenant=f"t{n}", action=f"a.{i}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        producer.flush(10)
        assert producer.stats().acknowledged == 401
    for n in range(4):
        mine = [orjson.loads(v)["action"] for k, v in kafka.sent if k == f"t{n}".encode()]
        assert mine == [f"a.{i}" for i in range(100)]
