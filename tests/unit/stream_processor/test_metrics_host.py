"""The processor's Prometheus endpoint binds loopback unless told otherwise (issue 20 item 5)."""

from __future__ import annotations

import pytest

from audit_events.settings import AuditSettings
from auditstream.embedded import free_port
from stream_processor.metrics import ProcessorMetrics
from stream_processor.worker import start_metrics_server

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_processor_metrics_bind_loopback_by_default(host: str | None, expected: str) -> None:
    extra = {} if host is None else {"processor_metrics_host": host}
    settings = AuditSettings(processor_metrics_port=free_port(), **extra)  # type: ignore[arg-type]
    server = start_metrics_server(settings, ProcessorMetrics())
    try:
        assert server.server_address[0] == expected
    finally:
        server.shutdown()
        server.server_close()


def test_processor_metrics_port_zero_starts_nothing() -> None:
    assert start_metrics_server(AuditSettings(processor_metrics_port=0), ProcessorMetrics()) is None
