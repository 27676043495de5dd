"""The processor's Prometheus endpoint binds loopback unless told otherwise (issue 20 item 5)."""

from __future__ import annotations

import socket

import pytest

from audit_events.settings import AuditSettings
from stream_processor.metrics import ProcessorMetrics
from stream_processor.worker import start_metrics_server

pytestmark = pytest.mark.unit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_processor_metrics_bind_loopback_by_default(host: str | None, expected: str) -> None:
    extra = {} if host is None else {"processor_metrics_host": host}
    settings = AuditSettings(processor_metrics_port=_free_port(), **extra)  # type: ignore[arg-type]
    server = start_metrics_server(settings, ProcessorMetrics())
    try:
        assert server.server_address[0] == expected
    finally:
        server.shutdown()
        server.server_close()


def test_processor_metrics_port_zero_starts_nothing() -> None:
    assert start_metrics_server(AuditSettings(processor_metrics_port=0), ProcessorMetrics()) is None
