"""Serve the query API with Hypercorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client import CollectorRegistry, make_asgi_app

from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics
from query_api.app import create_app
from query_api.health import metrics_registry

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def metrics_app(registry: CollectorRegistry) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app for the metrics port: ``GET /metrics`` (prometheus_client's), 404 elsewhere."""
    prometheus = make_asgi_app(registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await prometheus(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def serve_api(settings: AuditSettings) -> None:
    app = create_app(settings)
    config = Config()
    config.bind = [f"{settings.api_host}:{settings.api_port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0
    servers: list[tuple[Any, Config]] = [(app, config)]
    if settings.api_metrics_port is not None:
        # /metrics on its own port, away from the internet-facing one (which then
        # answers 404 there); the NetworkPolicy lets only Prometheus reach it.
        metrics = Config()
        metrics.bind = [f"{settings.api_host}:{settings.api_metrics_port}"]
        metrics.accesslog = None
        metrics.graceful_timeout = 1.0
        servers.append((metrics_app(metrics_registry(app)), metrics))

    async def main() -> None:
        # The app checks the topics again at start; checking here first turns a
        # refusal (the events topic deletes records) into one line, not a traceback.
        await prepare_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.gather(*(serve(a, c, shutdown_trigger=stop.wait) for a, c in servers))

    asyncio.run(main())
