"""The async producer against a fake transport: validation, ordering, spool, backpressure."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
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
from producers.spool import Spool, SpoolDirectory
from tests.helpers import eventually

pytestmark = pytest.mark.unit
REPO = str(Path(__file__).resolve().parents[3])


class FakeKafka:
    """A transport that is up or down at the test's command and records what it got."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.sent: list[tuple[bytes, bytes]] = []
        self.hold: asyncio.Event | None = None
        self.in_flight = asyncio.Event()  # set when a send starts (before any hold)
        self.connects = 0

    async def connect(self) -> None:
        if not self.up:
            raise ConnectionError("broker down")
        self.connects += 1

    async def send(
        self, messages: Sequence[tuple[bytes, bytes]], timeout: float
    ) -> list[tuple[int, int]]:
        self.in_flight.set()
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
        await asyncio.wait_for(kafka.in_flight.wait(), 5)  # the first is in flight, held
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
    await asyncio.wait_for(kafka.in_flight.wait(), 5)  # a.0, a.1 in flight
    for i in range(2, 5):  # a.4 overflows: a.2..a.4 go to the spool
        producer.emit_nowait(tenant="acme", action=f"a.{i}")
    assert producer.spool_size == 3
    kafka.up = False
    kafka.hold.set()  # the in-flight chunk fails
    await eventually(lambda: producer.spool_size == 5, 10, 0.01)
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
    with SyncAuditProducer(
        config(), transport=kafka, close_at_exit=False, durable=False
    ) as producer:
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


def rows_on_disk(directory: Path) -> list[str]:
    """Actions committed to the spool files in ``directory``, read by another connection."""
    actions = []
    for path in sorted(directory.glob("*.db")):
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT value FROM spool ORDER BY seq").fetchall()
        actions += [orjson.loads(v)["action"] for (v,) in rows]
    return actions


async def test_durable_emit_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    """Durable mode: nothing waits in memory; a kill after emit returns loses nothing."""
    kafka = FakeKafka(up=True)
    kafka.hold = asyncio.Event()  # Kafka never answers while we look
    cfg = config(spool_dir=tmp_path / "spool", durable=True, chunk_size=3)
    producer = AuditProducer(cfg, kafka)
    await producer.start()
    for i in range(5):
        producer.emit_nowait(tenant="acme", action=f"a.{i}")  # no await in between
    receipt = await producer.emit(tenant="acme", action="a.5")
    assert receipt.status == "spooled"
    assert rows_on_disk(tmp_path / "spool") == [f"a.{i}" for i in range(6)]
    await producer.flush(1)  # nothing in memory: returns at once
    kafka.hold.set()
    await producer.wait_spool_empty(10)
    await producer.close()
    assert kafka.actions() == [f"a.{i}" for i in range(6)]
    assert list((tmp_path / "spool").glob("*")) == []  # an emptied own file is removed


def test_durable_needs_a_spool() -> None:
    with pytest.raises(ValueError, match="spool"):
        config(durable=True)


async def test_without_bootstrap_everything_is_spooled(tmp_path: Path) -> None:
    kafka = FakeKafka()
    producer = AuditProducer(config(spool_dir=tmp_path, durable=True, bootstrap=""), kafka)
    await producer.start()  # does not raise: there is a spool
    producer.emit_nowait(tenant="acme", action="a.kept")
    await asyncio.sleep(0.1)
    await producer.close()
    assert kafka.connects == 0 and rows_on_disk(tmp_path) == ["a.kept"]


def test_spool_directory_claim_is_exclusive(tmp_path: Path) -> None:
    directory = SpoolDirectory(tmp_path, max_events=100, max_bytes=100_000)
    own = directory.create()
    assert directory.claim(exclude=own) is None  # our own file is held by us
    dead = directory.create()
    dead.append([(b"k", b"v")])
    assert directory.claim(exclude=own) is None  # held: its owner is alive
    assert dead.lock is not None
    dead.lock.release()  # what the kernel does when the owner dies
    first = directory.claim(exclude=own)
    assert first is not None and first.events == 1
    assert directory.claim(exclude=own) is None  # a second drainer gets nothing
    first.remove_through(first.peek(10)[-1][0])
    assert first.close(delete_if_empty=True)
    assert [p.name for p in tmp_path.glob("*.lock")] == [own.path.with_suffix(".lock").name]
    own.close(delete_if_empty=True)
    assert list(tmp_path.iterdir()) == []


async def test_files_of_dead_processes_are_drained_by_a_live_one(tmp_path: Path) -> None:
    """A child process spools durably and is SIGKILLed; a live producer claims its file."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {REPO!r})
        from producers import ProducerConfig, SyncAuditProducer
        cfg = ProducerConfig(bootstrap="127.0.0.1:1", spool_dir={str(tmp_path)!r},
                             reconnect_initial=5, reconnect_max=5)
        audit = SyncAuditProducer(cfg).start(wait_connected=False)
        for i in range(20):
            audit.emit_nowait(tenant="acme", action=f"a.dead{{i}}")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL
    assert rows_on_disk(tmp_path) == [f"a.dead{i}" for i in range(20)]

    kafka = FakeKafka()
    producer = AuditProducer(config(spool_dir=tmp_path, durable=True), kafka)
    await producer.start()
    await eventually(lambda: producer.stats().claimed == 20, 10, 0.01)
    await producer.wait_spool_empty(10)
    await producer.close()
    assert kafka.actions() == [f"a.dead{i}" for i in range(20)]
    assert rows_on_disk(tmp_path) == []
    assert not any(tmp_path.glob("*.lock"))  # noqa: ASYNC240 - a test's tmp dir


def test_sync_facade_is_durable_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    kafka = FakeKafka(up=False)
    audit = SyncAuditProducer(
        config(service="cron"), transport=kafka, close_at_exit=False, handle_sigterm=False
    ).start(wait_connected=False)
    try:
        assert audit.config.durable and audit.config.spool_dir == tmp_path / "auditstream" / (
            "spool/cron"
        )
        assert audit.emit(tenant="acme", action="a.0").status == "spooled"
        audit.emit_nowait(tenant="acme", action="a.1")
        assert rows_on_disk(audit.config.spool_dir) == ["a.0", "a.1"]
        kafka.up = True
        audit.wait_spool_empty(10)
    finally:
        audit.close()
    assert kafka.actions() == ["a.0", "a.1"]


def test_sigterm_spools_what_is_in_memory(tmp_path: Path) -> None:
    """Non-durable mode, Kafka down, default SIGTERM disposition: the buffer reaches the
    spool before the process dies of the signal."""
    spool = tmp_path / "spool.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {REPO!r})
        from producers import ProducerConfig, SyncAuditProducer
        cfg = ProducerConfig(bootstrap="127.0.0.1:1", spool_path={str(spool)!r},
                             reconnect_initial=30, reconnect_max=30)
        audit = SyncAuditProducer(cfg, durable=False).start(wait_connected=True)
        for i in range(50):
            audit.emit_nowait(tenant="acme", action=f"a.n{{i}}")
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert done.returncode == -signal.SIGTERM  # still dies of the signal, as before
    stored = Spool(spool, 1000, 10**7)
    assert [orjson.loads(v)["action"] for _, _, v in stored.peek(100)] == [
        f"a.n{i}" for i in range(50)
    ]
    stored.close()


async def test_an_old_one_file_spool_is_adopted_and_drained(tmp_path: Path) -> None:
    """Upgrading from SPOOL_PATH (one file) to a spool directory loses nothing."""
    old = Spool(tmp_path / "audit-spool.db", 100, 100_000)
    old.append(
        [(b"acme", encode_event(build_event(tenant="acme", action=f"a.old{i}"))) for i in range(3)]
    )
    old.close()
    directory = SpoolDirectory(tmp_path / "audit-spool.d", 100, 100_000)
    assert directory.adopt(tmp_path / "audit-spool.db")
    assert not directory.adopt(tmp_path / "audit-spool.db")  # gone: a second process gets nothing
    kafka = FakeKafka()
    async with AuditProducer(config(spool_dir=directory.path, durable=True), kafka) as producer:
        await eventually(lambda: producer.stats().claimed == 3, 10, 0.01)
    assert kafka.actions() == ["a.old0", "a.old1", "a.old2"]
    assert rows_on_disk(directory.path) == []
