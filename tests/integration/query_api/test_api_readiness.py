"""API readiness describes what the pod can serve (issue 21 item 3).

Kafka down: writes answer 503, reads keep working, and the pod stays ready
(``degraded``) so a Kafka blip does not take reads and verify out of the Service.
(Redis down → ready + degraded, and MongoDB down → not ready, are in
test_api_cache and test_hostile_api.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from quart import Quart

from audit_events.settings import AuditSettings
from auditstream.embedded import kafka_server
from query_api.app import create_app
from query_api.health import readiness

pytestmark = pytest.mark.integration


async def test_kafka_down_keeps_the_pod_ready_reads_work_writes_503(
    settings: AuditSettings, tmp_path: Path, auth: Callable[..., dict[str, str]]
) -> None:
    kafka = kafka_server(tmp_path / "kafka")  # our own broker, so we may kill it
    kafka.start()
    try:
        own = settings.model_copy(update={"kafka_bootstrap": kafka.url})
        app: Quart = create_app(own)
        async with app.test_app():
            client = app.test_client()
            headers = auth("acme")
            event = {"tenant": "acme", "action": "invoice.update", "actor": {"id": "u1"}}
            before = await client.get("/readyz")
            assert before.status_code == 200 and (await before.get_json())["status"] == "ok"
            assert (await client.post("/v1/events", json=event, headers=headers)).status_code == 202
            kafka.kill()
            ready = await client.get("/readyz")
            body = await ready.get_json()
            assert ready.status_code == 200, body
            assert body["status"] == "degraded" and body["down"] == ["kafka"]
            assert body["serves"] == {
                "reads": True,
                "verify": True,
                "writes": False,
                "cache": True,
                "logins": True,
            }
            read = await client.get("/v1/events", headers=headers)
            assert read.status_code == 200
            write = await client.post("/v1/events", json=event, headers=headers)
            assert write.status_code == 503
            assert write.headers["Content-Type"] == "application/problem+json"
    finally:
        kafka.kill()


@pytest.mark.parametrize(
    ("down", "status", "word"),
    [
        ((), 200, "ok"),
        (("kafka",), 200, "degraded"),
        (("redis",), 200, "degraded"),
        (("kafka", "redis"), 200, "degraded"),
        (("mongodb",), 503, "unavailable"),
        (("mongodb", "kafka", "redis"), 503, "unavailable"),
    ],
)
def test_readiness_is_mongodb_and_the_rest_degrades(
    down: tuple[str, ...], status: int, word: str
) -> None:
    checks = {name: name not in down for name in ("kafka", "mongodb", "redis")}
    code, body = readiness(checks)
    assert (code, body["status"], sorted(body["down"])) == (status, word, sorted(down))
