"""Run one processor worker: metrics endpoint + the Faust worker."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import start_http_server

from audit_events.settings import AuditSettings
from stream_processor.app import create_app, kill_before_commit
from stream_processor.metrics import ProcessorMetrics

# Test-only fault injection (not a setting): SIGKILL the worker between the
# write and the commit of its N-th stored batch. Used by the crash tests.
FAULT_ENV = "AUDITSTREAM_TEST_KILL_BEFORE_COMMIT"


def run_worker(settings: AuditSettings, loglevel: str = "warn") -> None:
    """Block running the worker until SIGINT/SIGTERM. Metrics on ``/metrics`` (any path)."""
    import faust

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    metrics = ProcessorMetrics()
    fault = os.environ.get(FAULT_ENV)
    hook = kill_before_commit(int(fault)) if fault else None
    app = create_app(settings, metrics, before_commit=hook)
    if settings.processor_metrics_port:
        start_http_server(settings.processor_metrics_port, registry=metrics.registry)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
