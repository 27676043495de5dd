"""``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import os

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from quart import Blueprint, Quart, Response

from query_api.problems import Problem
from query_api.state import api_state

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


def readiness(checks: dict[str, bool]) -> tuple[int, dict[str, object]]:
    """What the pod can serve, from which dependencies answer.

    Every route needs MongoDB (reads, verify, and the account check of every
    token), so the pod is ready exactly when MongoDB answers. Kafka down only
    stops writes (POST/PUT/DELETE answer 503, clients retry), Redis down only
    the cache and logins' rate limits (reads go to MongoDB, logins answer 503):
    the pod stays in the Service and says ``degraded``. Taking every pod out on
    a Kafka blip would take reads and verify down with it.
    """
    down = [name for name, ok in checks.items() if not ok]
    serves = {
        "reads": checks["mongodb"],
        "verify": checks["mongodb"],
        "writes": checks["mongodb"] and checks["kafka"],
        "cache": checks["redis"],
        "logins": checks["mongodb"] and checks["redis"],
    }
    ready = checks["mongodb"]
    status = "ok" if not down else ("degraded" if ready else "unavailable")
    body: dict[str, object] = {"status": status, "checks": checks, "down": down, "serves": serves}
    return (200 if ready else 503), body


@bp.get("/readyz")
async def readyz() -> Response:
    """200 while MongoDB answers (``degraded`` naming Kafka or Redis when they do not)."""
    services = api_state().services
    if services is None:
        starting = {"status": "starting", "down": ["kafka", "mongodb", "redis"]}
        return Response(orjson.dumps(starting), 503, content_type="application/json")
    kafka, mongo, redis = await asyncio.gather(
        services.publisher.ping(),
        _check(services.mongo.admin.command("ping")),
        _check(services.redis.ping()),
    )
    status, body = readiness({"kafka": kafka, "mongodb": mongo, "redis": redis})
    return Response(orjson.dumps(body), status, content_type="application/json")


@bp.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format; 404 when AUDITSTREAM_API_METRICS_PORT serves it instead."""
    if api_state().settings.api_metrics_port is not None:
        raise Problem(404, "metrics are served on AUDITSTREAM_API_METRICS_PORT")
    registry = multiprocess_registry() or metrics_registry()
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_registry() -> CollectorRegistry | None:
    """Every API worker's metrics, summed (AUDITSTREAM_API_WORKERS > 1), else None."""
    if not os.environ.get(MULTIPROC_ENV):
        return None
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def metrics_registry(app: Quart | None = None) -> CollectorRegistry:
    """The API's metrics (``auditstream api`` serves them on the metrics port)."""
    return api_state(app).metrics.registry
