"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio

import orjson
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, current_app

from query_api.services import Services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    """The process is up."""
    return Response(orjson.dumps({"status": "ok"}), content_type="application/json")


async def _check(coro: object, timeout: float = 2.0) -> bool:
    try:
        return bool(await asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]
    except Exception:
        return False


@bp.get("/readyz")
async def readyz() -> Response:
    """200 when Kafka, MongoDB and Redis answer; 503 naming what is down."""
    services: Services | None = current_app.config.get("AUDITSTREAM_SERVICES")
    if services is None:
        starting = {"status": "starting", "down": ["kafka", "mongodb", "redis"]}
        return Response(orjson.dumps(starting), 503, content_type="application/json")
    kafka, mongo, redis = await asyncio.gather(
        services.publisher.ping(),
        _check(services.mongo.admin.command("ping")),
        _check(services.redis.ping()),
    )
    checks = {"kafka": kafka, "mongodb": mongo, "redis": redis}
    down = [name for name, ok in checks.items() if not ok]
    status = 200 if not down else 503
    # Redis down only degrades reads (served from MongoDB): still ready, but say so.
    if down == ["redis"]:
        status = 200
    body: dict[str, object] = {
        "status": "ok" if not down else ("degraded" if status == 200 else "unavailable"),
        "checks": checks,
        "down": down,
    }
    return Response(orjson.dumps(body), status, content_type="application/json")


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format."""
    registry = current_app.config["AUDITSTREAM_METRICS"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
