"""The archiver while MongoDB (its masking rules) is down, on real servers: a SecantusDB
of its own that the test stops and starts again. The archiver waits: it archives no
unmasked copy, loses nothing, does not exit, and resumes once MongoDB is back, with the
one MongoDB client it keeps for its life."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from pymongo import AsyncMongoClient, monitoring

from audit_events.masking import MASKING_COLLECTION, MaskingRules, save_version
from audit_events.settings import AuditSettings
from auditstream.embedded import Server
from stream_processor.archive.archiver import Archiver
from tests.helpers import eventually

pytestmark = pytest.mark.integration
SECRET = "ann.original@example.com"


@pytest.fixture
def settings(settings: AuditSettings, tmp_path: Path, own_mongo: Server) -> AuditSettings:
    return settings.model_copy(
        update={
            "mongo_uri": own_mongo.url,
            "mongo_timeout_ms": 1000,  # each try against the stopped store fails in 1 s
            "masking_cache_seconds": 0.1,  # the rules are read again for every fetch
            "masking_delay_seconds": 0.0,
            "archive_dir": str(tmp_path / "archive"),
            "archive_segment_seconds": 0.3,
            "archiver_metrics_port": 0,
            "archiver_group": f"{settings.processor_group}-archiver",
        }
    )


async def produce(settings: AuditSettings, prefix: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            value = (
                b'{"id": "%s-%d", "tenant": "acme", "action": "user.login",'
                b' "metadata": {"email": "%s"}}' % (prefix.encode(), i, SECRET.encode())
            )
            await producer.send_and_wait(settings.topic_events, value, key=b"acme")
    finally:
        await producer.stop()


class ClientsOpened(monitoring.TopologyListener):
    """Counts the MongoDB clients (topologies) opened in this process meanwhile."""

    def __init__(self) -> None:
        self.count = 0

    def opened(self, event: monitoring.TopologyOpenedEvent) -> None:  # type: ignore[override]
        self.count += 1

    def description_changed(self, event: monitoring.TopologyDescriptionChangedEvent) -> None:
        pass

    def closed(self, event: monitoring.TopologyClosedEvent) -> None:
        pass


def archived_bytes(settings: AuditSettings) -> bytes:
    root = Path(settings.archive_path())
    return b"".join(gzip.decompress(p.read_bytes()) for p in sorted(root.rglob("*.gz")))


@pytest.mark.parametrize(
    "down_seconds",
    [
        3.0,
        # longer than the 60 s after which the archiver used to give up and exit
        pytest.param(70.0, marks=pytest.mark.slow, id="longer-than-a-minute"),
    ],
)
async def test_the_archiver_waits_for_mongodb_and_resumes_masked(
    down_seconds: float, settings: AuditSettings, own_mongo: Server
) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(own_mongo.url, tz_aware=True)
    rules = MaskingRules.model_validate({"rules": [{"path": "metadata.email", "action": "redact"}]})
    await save_version(
        mongo[settings.mongo_db][MASKING_COLLECTION],
        "acme",
        rules,
        now=datetime.now(UTC) - timedelta(seconds=5),
        delay_seconds=0,
        by="tester",
    )
    await mongo.close()

    clients = ClientsOpened()
    monitoring.register(clients)  # process-wide: removed again below
    archiver = Archiver(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    started = asyncio.get_running_loop().time()

    def archived(n: int) -> bool:
        assert not task.done(), task
        return sum(e.count for e in archiver.manifest.entries) >= n

    try:
        await produce(settings, "up", 5)
        await eventually(lambda: archived(5), 60, what="the first records archived")
        assert b"up-4" in archived_bytes(settings) and SECRET.encode() not in archived_bytes(
            settings
        )

        await asyncio.to_thread(own_mongo.stop)  # MongoDB down
        await produce(settings, "down", 5)
        await asyncio.sleep(down_seconds)  # many segment periods: nothing is archived
        assert not task.done()  # waiting, not exited
        assert sum(e.count for e in archiver.manifest.entries) == 5
        assert SECRET.encode() not in archived_bytes(settings)

        await asyncio.to_thread(own_mongo.start)  # back, same port and data
        await eventually(lambda: archived(10), 60, what="the archiver resumed")
        data = archived_bytes(settings)
        assert all(b"down-%d" % i in data for i in range(5)) and SECRET.encode() not in data
        # one MongoDB client for the archiver's life (before: one per load of the rules)
        assert clients.count == 1, f"{clients.count} clients opened"
    finally:
        monitoring._LISTENERS.topology_listeners.remove(clients)
        stop.set()
        await asyncio.wait_for(task, 60)
    took = asyncio.get_running_loop().time() - started
    print(f"\narchiver: MongoDB down {down_seconds}s, whole run {took:.1f}s")
    offsets = [(e.partition, e.first_offset, e.last_offset) for e in archiver.manifest.entries]
    assert sum(last - first + 1 for _, first, last in offsets) == 10  # each record once
