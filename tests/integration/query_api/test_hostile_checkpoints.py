"""A record on the checkpoints topic that aiokafka cannot parse (a header name that is
not UTF-8: any producer that may write the topic can send one, and the topic keeps
everything) never makes ``GET /v1/verify`` answer 500, and the Kafka copy of the
signed checkpoints is still read past it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.consumer import fetcher
from aiokafka.record import memory_records

from audit_events.settings import AuditSettings
from tests.helpers import bearer
from tests.integration.stream_processor.test_hostile_producers import _RawName

pytestmark = pytest.mark.integration


async def test_a_checkpoint_record_with_a_header_name_not_utf8_never_makes_verify_500(
    http: httpx.AsyncClient, settings: AuditSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiokafka.producer import message_accumulator
    from aiokafka.producer import producer as producer_module
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    # the API process as it starts: aiokafka's own reader (another test may have
    # installed the stream processor's in this process)
    monkeypatch.setattr(fetcher, "MemoryRecords", memory_records.MemoryRecords)
    for module in (message_accumulator, producer_module):  # the builder that calls encode()
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic_checkpoints, b"{}", key=b"acme", headers=[(_RawName("h"), b"v")]
        )
        await producer.send_and_wait(
            settings.topic_checkpoints, b'{"tenant":"globex","seq":"x"}', key=b"globex"
        )
    finally:
        await producer.stop()
    acme = await http.get("/v1/verify", headers=bearer(settings))
    assert acme.status_code == 200, acme.text
    globex = await http.get("/v1/verify", headers=bearer(settings, tenant="globex"))
    assert globex.status_code == 200, globex.text
    body: dict[str, Any] = globex.json()
    # read past the unparsable record: the later (unsigned) checkpoint is found
    assert (body["ok"], body["reason"]) == (False, "bad_checkpoint"), body
