"""Ctrl-C of ``auditstream up`` while producers keep publishing straight to Kafka
(the SDK): the archive still holds every event the store holds, so ``replay``
can rebuild the store after the in-memory Kafka is gone.

The archiver drains the topics for up to 10 s at its stop; ``up`` used to stop it
before the worker and SIGKILL it after 10 s, so under load it never published its
open segment (up to ``ARCHIVE_SEGMENT_SECONDS`` of events), and the worker went on
storing events the archiver had not read.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from auditstream.embedded import free_port
from stream_processor.archive.reader import ArchiveReader
from tests.helpers import event_body, eventually_sync, exited
from tests.integration.auditstream.test_up_lifecycle import _env, _up, _wait_ready

pytestmark = pytest.mark.integration


def _kafka(out: Path) -> str:
    found = re.search(r"AUDITSTREAM_KAFKA_BOOTSTRAP='([^']+)'", out.read_text())
    assert found, out.read_text()
    return found.group(1)


class Publisher(threading.Thread):
    """Publishes to the events topic, 100 events/s, until stopped or Kafka is gone."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.acked: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=3000
        )
        await producer.start()
        try:
            n = 0
            while not self.stop.is_set():
                body = event_body(n, tenant="demo", id=f"d-{n}", action="direct.test")
                try:
                    await producer.send_and_wait("audit.events", json.dumps(body).encode(), b"demo")
                except Exception:
                    return  # Kafka is gone
                self.acked.append(body["id"])
                n += 1
                await asyncio.sleep(0.01)
        finally:
            await asyncio.wait_for(producer.stop(), 10)


def test_the_archive_holds_every_stored_event_after_ctrl_c_under_load(tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    port = free_port()
    env = _env(data_dir, port)
    out = tmp_path / "up.out"
    up = _up(env, tmp_path, out)
    publisher: Publisher | None = None
    try:
        _wait_ready(up, out)
        publisher = Publisher(_kafka(out))
        publisher.start()
        eventually_sync(lambda: len(publisher.acked) >= 200, 60, 0.1, abort=exited(up))
        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0, out.read_text()
        publisher.stop.set()
        publisher.join(30)
        stop = out.read_text().split("stopping …")[-1]
        print(stop)
        took = re.search(r"stopping archiver … stopped \(([\d.]+)s\)", stop)
        assert took, stop
        # it reads up to what the topics held at its stop, not for 10 s more of load
        # (the old drain took its whole 10 s; 1.3 s measured; margin for a loaded CI)
        assert float(took.group(1)) < 9.0, stop
        archived = set()
        reader = ArchiveReader(data_dir / "archive")
        for partition in reader.partitions("audit.events"):
            for record in reader.records(reader.entries("audit.events", partition)):
                assert record.value is not None
                archived.add(json.loads(record.value)["id"])

        out2 = tmp_path / "up2.out"
        up = _up(env, tmp_path, out2)
        _wait_ready(up, out2)
        found = re.search(r"export TOKEN=(\S+)", out2.read_text())
        assert found, out2.read_text()
        stored: set[str] = set()
        cursor: str | None = None
        while True:
            params = {"action": "direct.test", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = httpx.get(
                f"http://127.0.0.1:{port}/v1/events",
                params=params,
                headers={"Authorization": f"Bearer {found.group(1)}"},
                timeout=30,
            )
            assert page.status_code == 200, page.text
            stored |= {e["id"] for e in page.json()["data"]}
            cursor = page.json()["next_cursor"]
            if not cursor:
                break
        acked = set(publisher.acked)
        print(f"acked {len(acked)}, stored {len(stored)}, archived {len(archived & stored)}")
        assert len(stored) >= 200
        assert stored <= archived, f"{len(stored - archived)} stored events are not archived"
        up.send_signal(signal.SIGINT)
        assert up.wait(90) == 0, out2.read_text()
    finally:
        if publisher is not None:
            publisher.stop.set()
        if up.poll() is None:
            up.kill()  # its watchdog stops the rest
            up.wait(10)
