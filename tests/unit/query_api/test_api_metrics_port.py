"""The API's /metrics away from the internet-facing port (issue 21 item 7).

With AUDITSTREAM_API_METRICS_PORT set (compose, k8s), ``auditstream api`` serves
/metrics on that port only; the API port answers 404 there. Unset (development,
``auditstream up``), /metrics stays on the API port.
"""

from __future__ import annotations

import httpx
import pytest

from audit_events.settings import AuditSettings
from auditstream.serve import metrics_app
from query_api.app import create_app
from query_api.health import metrics_registry

pytestmark = pytest.mark.unit


def _settings(**extra: object) -> AuditSettings:
    return AuditSettings(
        _env_file=None,
        jwt_secret="s" * 48,
        kafka_bootstrap="k:1",
        mongo_uri="mongodb://m",
        redis_url="redis://r",
        **extra,
    )  # type: ignore[call-arg]


async def test_metrics_leave_the_api_port_when_a_metrics_port_is_set() -> None:
    app = create_app(_settings(api_metrics_port=9111))
    response = await app.test_client().get("/metrics")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


async def test_the_metrics_port_answers_metrics_only() -> None:
    app = create_app(_settings(api_metrics_port=9111))
    await app.test_client().get("/healthz")  # one request counted
    transport = httpx.ASGITransport(app=metrics_app(metrics_registry(app)))
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert 'auditstream_api_requests_total{method="GET",route="/healthz"' in metrics.text
        assert (await client.get("/healthz")).status_code == 404
        assert (await client.get("/v1/events")).status_code == 404


async def test_without_a_metrics_port_the_api_port_serves_metrics() -> None:
    app = create_app(_settings())
    response = await app.test_client().get("/metrics")
    assert response.status_code == 200
    assert "auditstream_api_requests" in (await response.get_data(as_text=True))
