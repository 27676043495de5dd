"""Health, readiness, metrics, the OpenAPI description and request ids, over HTTP."""

from __future__ import annotations

import httpx
import pytest

from audit_events.settings import AuditSettings
from tests.helpers import bearer

pytestmark = pytest.mark.integration


async def test_request_id_is_accepted_or_generated_and_returned(
    http: httpx.AsyncClient, settings: AuditSettings, caplog: pytest.LogCaptureFixture
) -> None:
    given = await http.get("/healthz", headers={"X-Request-ID": "req-abc.123"})
    assert given.headers["X-Request-ID"] == "req-abc.123"
    made = await http.get("/healthz")
    assert len(made.headers["X-Request-ID"]) == 32
    hostile = await http.get("/healthz", headers={"X-Request-ID": 'a b"<script>' + "x" * 200})
    assert hostile.headers["X-Request-ID"] != 'a b"<script>' + "x" * 200
    problem = await http.get(
        "/v1/events?nope=1", headers={**bearer(settings), "X-Request-ID": "req-problem"}
    )
    assert problem.status_code == 400
    assert problem.headers["Content-Type"] == "application/problem+json"
    assert problem.json()["request_id"] == "req-problem"
    assert problem.json()["detail"] == "unknown query parameter 'nope'"


async def test_health_ready_metrics(http: httpx.AsyncClient, settings: AuditSettings) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    for _ in range(2):
        await http.get("/v1/events", headers=bearer(settings))
    await http.get("/v1/events")
    text = (await http.get("/metrics")).text
    assert (
        'auditstream_api_requests_total{method="GET",route="/v1/events",status="200"} 2.0' in text
    )
    assert (
        'auditstream_api_requests_total{method="GET",route="/v1/events",status="401"} 1.0' in text
    )
    assert 'auditstream_api_request_seconds_bucket{le="0.005",route="/v1/events"}' in text
    assert 'auditstream_api_cache_total{result="miss"} 1.0' in text
    assert 'auditstream_api_cache_total{result="hit"} 1.0' in text


async def test_openapi_and_docs(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    events = spec["paths"]["/v1/events"]
    assert {"get", "post"} <= set(events)
    assert events["post"]["responses"]["503"]["content"] == {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    assert spec["paths"]["/v1/token"]["post"]["security"] == []
    names = {p["name"] for p in events["get"]["parameters"]}
    assert {"actor", "action", "since", "until", "q", "cursor", "limit", "order"} <= names
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
