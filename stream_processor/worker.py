"""Run one processor worker: metrics endpoint + the Faust worker."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import start_http_server

from audit_events.settings import AuditSettings
from stream_processor.app import create_app
from stream_processor.metrics import ProcessorMetrics


def run_worker(settings: AuditSettings, loglevel: str = "warn") -> None:
    """Block running the worker until SIGINT/SIGTERM. Metrics on ``/metrics`` (any path)."""
    import faust

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    metrics = ProcessorMetrics()
    app = create_app(settings, metrics)
    if settings.processor_metrics_port:
        start_http_server(settings.processor_metrics_port, registry=metrics.registry)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
