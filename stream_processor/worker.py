"""Run one processor worker: metrics endpoint + the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaError

from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics
from stream_processor.app import EXIT_BATCH_FAILED, create_app, kill_before_commit
from stream_processor.checkpoints import require_signing_key
from stream_processor.health import Heartbeat, ProbeServer, WorkerProbes, start_watchdog
from stream_processor.metrics import ProcessorMetrics

# Test-only fault injection (not a setting): SIGKILL the worker between the
# write and the commit of its N-th stored batch. Used by the crash tests.
FAULT_ENV = "AUDITSTREAM_TEST_KILL_BEFORE_COMMIT"
log = logging.getLogger("auditstream.processor")


def run_worker(settings: AuditSettings, loglevel: str = "warn") -> None:
    """Block running the worker until SIGINT/SIGTERM. ``/metrics``, ``/healthz``, ``/readyz``.

    Refuses to start (:class:`~audit_events.settings.SettingsError`, one line)
    without a checkpoint signing key and when the events topic would delete
    records, unless a setting accepts that; creates missing topics from the spec.
    """
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
    probes = WorkerProbes(
        Heartbeat(settings.processor_liveness_seconds, settings.write_retry_seconds)
    )
    app = create_app(settings, metrics, before_commit=hook, probes=probes)
    start_metrics_server(settings, metrics, probes, loop)
    start_watchdog(probes.heartbeat, _exit_stuck)  # compose/up restart what exits
    faust_worker(app, loglevel).execute_from_commandline()


def faust_worker(app: Any, loglevel: str = "warn") -> Any:
    """Faust's worker for ``app``, logging at ``loglevel``, without its terminal spinner.

    The spinner's handler sets the root logger to DEBUG (to spin on every record), so
    every library's debug record was built and handled: pymongo's command log alone
    is four records per store command, aiokafka's a few per fetch. Measured under
    ``?wait=true`` load (many small batches), ~8 % of the worker's main-thread CPU.
    """
    import faust

    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def start_metrics_server(
    settings: AuditSettings,
    metrics: ProcessorMetrics,
    probes: WorkerProbes | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Any:
    """The worker's HTTP server on ``processor_metrics_host:port`` (None when port 0).

    ``/metrics`` (Prometheus), ``/healthz`` (liveness: the batch loop steps) and
    ``/readyz`` (group member, store answers); any other path is 404
    (stream_processor/health.py). Returns the ``http.server`` instance.

    Loopback by default, like every other listener; containers set
    ``AUDITSTREAM_PROCESSOR_METRICS_HOST=0.0.0.0`` so Prometheus can scrape it.
    """
    if not settings.processor_metrics_port:
        return None
    if probes is None:  # nothing to probe: never live, never ready
        probes = WorkerProbes(Heartbeat(0.0, 0.0))
    probe = ProbeServer(
        settings.processor_metrics_host,
        settings.processor_metrics_port,
        metrics.registry,
        probes.heartbeat,
        ready=probes.ready,
        loop=loop,
    )
    return probe.start().httpd


def _exit_stuck(details: dict[str, Any]) -> None:
    """The batch loop stopped stepping: exit (nothing uncommitted is lost) to be restarted."""
    log.critical("the batch loop is stuck (%s); exiting so the worker is restarted", details)
    logging.shutdown()
    os._exit(EXIT_BATCH_FAILED)


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
