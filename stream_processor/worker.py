"""Run one processor worker: metrics endpoint + the Faust worker."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import start_http_server

from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics
from stream_processor.app import create_app, kill_before_commit
from stream_processor.checkpoints import require_signing_key
from stream_processor.metrics import ProcessorMetrics

# Test-only fault injection (not a setting): SIGKILL the worker between the
# write and the commit of its N-th stored batch. Used by the crash tests.
FAULT_ENV = "AUDITSTREAM_TEST_KILL_BEFORE_COMMIT"


def run_worker(settings: AuditSettings, loglevel: str = "warn") -> None:
    """Block running the worker until SIGINT/SIGTERM. Metrics on ``/metrics`` (any path).

    Refuses to start (:class:`~audit_events.settings.SettingsError`, one line)
    without a checkpoint signing key and when the events topic would delete
    records, unless a setting accepts that; creates missing topics from the spec.
    """
    import faust

    settings.require("kafka_bootstrap", "mongo_uri", "redis_url")
    require_signing_key(settings)
    # On a loop of its own that Faust then runs on (asyncio.run would unset it).
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(_prepare_topics(settings))
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    metrics = ProcessorMetrics()
    fault = os.environ.get(FAULT_ENV)
    hook = kill_before_commit(int(fault)) if fault else None
    app = create_app(settings, metrics, before_commit=hook)
    start_metrics_server(settings, metrics)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()


def start_metrics_server(settings: AuditSettings, metrics: ProcessorMetrics) -> Any:
    """The worker's Prometheus endpoint on ``processor_metrics_host:port`` (None when port 0).

    Loopback by default, like every other listener; containers set
    ``AUDITSTREAM_PROCESSOR_METRICS_HOST=0.0.0.0`` so Prometheus can scrape it.
    """
    if not settings.processor_metrics_port:
        return None
    server, _thread = start_http_server(
        settings.processor_metrics_port,
        addr=settings.processor_metrics_host,
        registry=metrics.registry,
    )
    return server


async def _prepare_topics(settings: AuditSettings, wait_seconds: float = 60.0) -> None:
    """Create missing topics and check the events topic, waiting for Kafka to answer."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            await prepare_topics(settings)
            return
        except (KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                why = f"Kafka at {settings.kafka_bootstrap} does not answer: {exc}"
                raise SystemExit(why) from None
            await asyncio.sleep(1.0)
