"""Serve the query API with Hypercorn until SIGINT/SIGTERM.

``AUDITSTREAM_API_WORKERS`` > 1: that many API processes (spawned children),
each binding the API port with ``SO_REUSEPORT`` (Hypercorn sets it when its
``workers`` setting is above 1) so the kernel spreads connections over them.
Their metrics are kept in prometheus_client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, a temporary directory unless set) and summed by
whoever serves ``/metrics``: the parent on AUDITSTREAM_API_METRICS_PORT, or each
worker on the API port. SIGTERM/SIGINT stop every worker gracefully; a worker
that dies stops the others and the command exits non-zero (the supervisor,
``up`` or Kubernetes, restarts it). The read cache's single-flight holds across
the processes (query_api/cache.py).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client import CollectorRegistry, make_asgi_app

from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics
from query_api.app import GC_FREEZE, create_app
from query_api.health import MULTIPROC_ENV, metrics_registry, multiprocess_registry

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


def _metrics_config(settings: AuditSettings) -> Config:
    metrics = Config()
    metrics.bind = [f"{settings.api_host}:{settings.api_metrics_port}"]
    metrics.accesslog = None
    metrics.graceful_timeout = 1.0
    return metrics


def serve_api(settings: AuditSettings) -> None:
    if settings.api_workers > 1:
        sys.exit(serve_workers(settings))
    _serve_one(settings, worker=False)


def _serve_one(settings: AuditSettings, *, worker: bool, parent: int | None = None) -> None:
    """One API process; ``worker``: one of several (the parent serves the metrics port)."""
    app = create_app(settings)
    app.config[GC_FREEZE] = True  # one app in this process: query_api/app.py
    config = Config()
    config.bind = [f"{settings.api_host}:{settings.api_port}"]
    config.accesslog = None
    config.graceful_timeout = 5.0
    config.workers = settings.api_workers  # > 1: SO_REUSEPORT on the API socket
    servers: list[tuple[Any, Config]] = [(app, config)]
    if settings.api_metrics_port is not None and not worker:
        # /metrics on its own port, away from the internet-facing one (which then
        # answers 404 there); the NetworkPolicy lets only Prometheus reach it.
        servers.append((metrics_app(metrics_registry(app)), _metrics_config(settings)))

    async def main() -> None:
        # The app checks the topics again at start; checking here first turns a
        # refusal (the events topic deletes records) into one line, not a traceback.
        if not worker:  # the parent checked them
            await prepare_topics(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if parent is not None:  # a parent killed outright leaves no worker behind
            # (its pid comes from the parent: one killed while this worker was still
            # starting would otherwise be taken for init, and never missed)
            loop.call_soon(_stop_when_orphaned, loop, parent, stop)
        await asyncio.gather(*(serve(a, c, shutdown_trigger=stop.wait) for a, c in servers))

    asyncio.run(main())


ORPHAN_EXIT_SECONDS = 15.0  # an orphaned worker's graceful stop, at most


def _stop_when_orphaned(loop: asyncio.AbstractEventLoop, parent: int, stop: asyncio.Event) -> None:
    if os.getppid() != parent:
        stop.set()
        # Nobody is left to SIGKILL a shutdown that hangs (a client or a shutdown hook
        # that never returns): a thread, not the loop, ends the process for sure.
        timer = threading.Timer(ORPHAN_EXIT_SECONDS, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
    elif not stop.is_set():
        loop.call_later(1.0, _stop_when_orphaned, loop, parent, stop)


def _worker(settings: AuditSettings, parent: int) -> None:
    """A spawned API worker (its metrics go to the parent's multiprocess directory)."""
    _serve_one(settings, worker=True, parent=parent)


def serve_workers(settings: AuditSettings) -> int:
    """Run ``settings.api_workers`` API processes until SIGINT/SIGTERM; the exit code."""
    own_dir = not os.environ.get(MULTIPROC_ENV)
    if own_dir:  # before the children start: they read it when they import prometheus_client
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="auditstream-api-metrics-")
    try:
        return asyncio.run(_supervise(settings))
    finally:
        if own_dir:
            shutil.rmtree(os.environ.pop(MULTIPROC_ENV), ignore_errors=True)


async def _supervise(settings: AuditSettings) -> int:
    await prepare_topics(settings)  # one refusal line, not one traceback per worker
    ctx = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    for _ in range(settings.api_workers):
        child = ctx.Process(target=_worker, args=(settings, os.getpid()), name="auditstream-api")
        child.start()
        workers.append(child)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving: list[asyncio.Task[None]] = []
    registry = multiprocess_registry()
    if settings.api_metrics_port is not None and registry is not None:
        app = metrics_app(registry)
        config = _metrics_config(settings)
        serving.append(asyncio.ensure_future(serve(app, config, shutdown_trigger=stop.wait)))  # type: ignore[arg-type]

    died = asyncio.Event()
    for proc in workers:  # a sentinel turns readable when its process ends
        loop.add_reader(proc.sentinel, died.set)
    watch = asyncio.ensure_future(died.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([watch, stopping], return_when=asyncio.FIRST_COMPLETED)
    crashed = died.is_set() and not stop.is_set()
    stop.set()
    watch.cancel()
    for process in workers:
        loop.remove_reader(process.sentinel)
    for process in workers:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)  # each stops gracefully
    for process in workers:
        await asyncio.to_thread(process.join, 15)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
    await asyncio.gather(*serving, return_exceptions=True)
    codes = [p.exitcode for p in workers]
    if crashed or any(code not in (0, -signal.SIGTERM) for code in codes):
        print(f"auditstream api: a worker exited (exit codes {codes})", file=sys.stderr)
        return 1
    return 0
