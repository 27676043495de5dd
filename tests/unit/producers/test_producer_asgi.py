"""The ASGI middleware around a real Quart app (plain ASGI3, driven by httpx)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from quart import Quart

from auditstream.embedded import free_port
from producers import AuditProducer, ProducerConfig
from producers.asgi import AuditMiddleware, Scope
from tests.unit.producers.test_producer import FakeKafka, config

pytestmark = pytest.mark.unit


def make_app() -> Quart:
    app = Quart(__name__)

    @app.get("/invoices/<ident>")
    async def invoice(ident: str) -> dict[str, Any]:
        return {"id": ident}

    @app.post("/invoices")
    async def create() -> tuple[dict[str, Any], int]:
        return {"ok": True}, 201

    @app.get("/secret")
    async def secret() -> tuple[str, int]:
        return "no", 403

    @app.get("/boom")
    async def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    return app


def actor_from_header(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"x-user":
            return str(value.decode())
    return None


async def test_one_event_per_request_with_request_facts() -> None:
    kafka = FakeKafka()
    producer = AuditProducer(config(), kafka)
    app = make_app()
    middleware = AuditMiddleware(app.asgi_app, producer, tenant="acme", actor=actor_from_header)
    app.asgi_app = middleware  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
        r = await http.get(
            "/invoices/42",
            headers={"x-user": "alice", "user-agent": "pytest-ua", "x-request-id": "req-1"},
        )
        assert r.status_code == 200
        assert (await http.post("/invoices", json={})).status_code == 201
        assert (await http.get("/secret")).status_code == 403
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/healthz")).status_code == 200  # excluded by default
    await producer.flush(5)
    await producer.close()
    events = [orjson.loads(v) for _, v in kafka.sent]
    assert [(e["action"], e["metadata"]["status"], e["outcome"]) for e in events] == [
        ("http.get", 200, "success"),
        ("http.post", 201, "success"),
        ("http.get", 403, "denied"),
        ("http.get", 500, "failure"),
    ]
    first = events[0]
    assert first["tenant"] == "acme" and first["crud"] == "r"
    assert first["actor"] == {"id": "alice", "type": "user"}
    assert first["targets"] == [{"type": "http.path", "id": "/invoices/42"}]
    assert first["context"] == {"ip": "10.1.2.3", "user_agent": "pytest-ua", "request_id": "req-1"}
    assert first["metadata"]["method"] == "GET" and first["metadata"]["latency_ms"] >= 0
    assert events[1]["crud"] == "c" and "actor" not in events[1]
    assert middleware.emitted == 4 and middleware.errors == 0


async def test_include_exclude_and_methods() -> None:
    kafka = FakeKafka()
    producer = AuditProducer(config(), kafka)
    app = make_app()
    app.asgi_app = AuditMiddleware(  # type: ignore[method-assign]
        app.asgi_app, producer, tenant="acme", include=[r"^/invoices"], methods=["POST"]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        await http.get("/invoices/1")
        await http.post("/invoices", json={})
        await http.get("/secret")
    await producer.flush(5)
    await producer.close()
    assert [orjson.loads(v)["action"] for _, v in kafka.sent] == ["http.post"]


async def test_kafka_down_neither_breaks_nor_slows_the_app(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    producer = AuditProducer(
        ProducerConfig(bootstrap=dead, spool_path=tmp_path / "spool.db", request_timeout_ms=1000)
    )
    app = make_app()
    app.asgi_app = AuditMiddleware(app.asgi_app, producer, tenant="acme")  # type: ignore[method-assign]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://shop"
    ) as http:
        started = time.perf_counter()
        for i in range(50):
            assert (await http.get(f"/invoices/{i}")).status_code == 200
        elapsed = time.perf_counter() - started
    await producer.flush(10)
    assert producer.spool_size == 50  # kept on disk, drained when Kafka returns
    await producer.close()
    assert elapsed < 5.0, f"50 requests took {elapsed:.2f}s with Kafka down"
