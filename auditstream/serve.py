"""Serve the query API with Hypercorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from hypercorn.asyncio import serve
from hypercorn.config import Config

from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics
from query_api.app import create_app


def serve_api(settings: AuditSettings) -> None:
    app = create_app(settings)
    config = Config()
    config.bind = [f"{settings.api_host}:{settings.api_port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0

    async def main() -> None:
        # The app checks the topics again at start; checking here first turns a
        # refusal (the events topic deletes records) into one line, not a traceback.
        await prepare_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)

    asyncio.run(main())
