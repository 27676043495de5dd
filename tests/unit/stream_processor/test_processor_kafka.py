"""The processor's Faust transport takes the consumer's fetch wait from settings."""

from __future__ import annotations

import pytest

from audit_events.settings import AuditSettings
from stream_processor.app import create_app

pytestmark = pytest.mark.unit


async def test_worker_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    settings = AuditSettings(
        kafka_bootstrap="127.0.0.1:1",
        mongo_uri="mongodb://127.0.0.1:1",
        redis_url="redis://127.0.0.1:1",
        processor_group="fetch-wait-test",
        kafka_fetch_max_wait_ms=77,
    )
    app = create_app(settings)
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)  # built, never started
    try:
        assert consumer._fetch_max_wait_ms == 77  # Faust alone would pass 1500
        assert consumer._group_id == "fetch-wait-test"
        assert consumer._enable_auto_commit is False
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the consumer thread's own loop, never started here


def test_fetch_wait_defaults_to_250_ms() -> None:
    assert AuditSettings().kafka_fetch_max_wait_ms == 250
