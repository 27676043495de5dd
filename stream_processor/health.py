"""The worker's probe endpoints: ``/healthz`` (liveness), ``/readyz`` and ``/metrics``.

Liveness means the batch loop makes progress. :class:`BatchLoop` beats a
:class:`Heartbeat` at every step, and an idle loop still steps at least every
``BatchLoop.TICK_SECONDS``; a flush (one batch: write, invalidate, commit)
is bounded by the retry deadline (``write_retry_seconds``), after which the
process exits on its own. So the worker is alive while

- the loop ticked within ``liveness_seconds``, or
- a flush is running and started less than ``write_retry_seconds`` +
  ``liveness_seconds`` ago;

anything else (a blocked event loop, an agent that died, a flush hanging past
its deadline, a loop that never started) answers 503 and the orchestrator
restarts the worker. Nothing is lost by that: offsets are committed only
after a batch is stored.

Readiness: the worker joined the consumer group (a partition assignment was
received and no rebalance is in progress), its store is open and MongoDB
answers a ping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("auditstream.processor")


@dataclass
class Heartbeat:
    """Progress of one batch loop, written by the loop, read by the probe thread."""

    liveness_seconds: float
    flush_deadline_seconds: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    last_tick: float | None = None
    flush_since: float | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def tick(self) -> None:
        self.last_tick = self.clock()

    def flush_started(self) -> None:
        self.flush_since = self.clock()

    def flush_done(self) -> None:
        self.flush_since = None
        self.tick()

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """(alive, details) as of now."""
        now = self.clock()
        flush_since = self.flush_since
        last = self.last_tick
        if flush_since is not None:
            age = now - flush_since
            ok = age <= self.flush_deadline_seconds + self.liveness_seconds
            return ok, {"state": "flushing", "flush_seconds": round(age, 3)}
        if last is None:
            # Opening the store is retried for up to the flush deadline too.
            age = now - self.started
            ok = age <= self.flush_deadline_seconds + self.liveness_seconds
            return ok, {"state": "starting", "seconds_since_start": round(age, 3)}
        age = now - last
        return age <= self.liveness_seconds, {
            "state": "polling",
            "seconds_since_tick": round(age, 3),
        }


ReadyCheck = Callable[[], Coroutine[Any, Any, dict[str, bool]]]


class ProbeServer:
    """HTTP probe endpoints in a thread of their own (like the Prometheus server).

    ``ready`` is a coroutine function run on ``loop`` (the worker's event loop)
    with a timeout: a blocked loop is also "not ready".
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        heartbeat: Heartbeat,
        *,
        ready: ReadyCheck | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        ready_timeout: float = 2.0,
    ) -> None:
        self.heartbeat = heartbeat
        self.registry = registry
        self.ready = ready
        self.loop = loop
        self.ready_timeout = ready_timeout
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ProbeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.ready is None or self.loop is None or self.loop.is_closed():
            return False, {"checks": {"worker": False}}
        try:
            fut: Future[dict[str, bool]] = asyncio.run_coroutine_threadsafe(self.ready(), self.loop)
            checks = fut.result(self.ready_timeout)
        except Exception:  # timeout (a blocked loop) or a failing check
            checks = {"event_loop": False}
        down = [name for name, ok in checks.items() if not ok]
        return not down, {"checks": checks, "down": down}


def _handler(server: ProbeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, details = server.heartbeat.alive()
                self._json(ok, {"status": "ok" if ok else "stuck", **details})
            elif path == "/readyz":
                ok, details = server.readiness()
                self._json(ok, {"status": "ready" if ok else "unavailable", **details})
            else:
                self._send(404, b'{"status": "not found"}', "application/json")

        def _json(self, ok: bool, body: dict[str, Any]) -> None:
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds: no access log

    return Handler


@dataclass
class WorkerProbes:
    """What the probes read from a running worker (filled in by ``create_app``)."""

    heartbeat: Heartbeat
    joined: bool = False  # a partition assignment was received (group member)
    rebalancing: Callable[[], bool] = lambda: False
    ping_store: Callable[[], Awaitable[bool]] | None = None

    async def ready(self) -> dict[str, bool]:
        store = False
        if self.ping_store is not None:
            try:
                store = await self.ping_store()
            except Exception:
                store = False
        return {"consumer_group": self.joined and not self.rebalancing(), "store": store}


def start_watchdog(
    heartbeat: Heartbeat, on_dead: Callable[[dict[str, Any]], None], interval: float = 1.0
) -> threading.Event:
    """Call ``on_dead(details)`` once, from a thread of its own, when the heartbeat dies.

    The worker exits there, so any supervisor that restarts exited processes
    (compose's ``restart:``, ``auditstream up``, systemd) also restarts a hung
    worker, not only Kubernetes' liveness probe. Set the returned event to stop.
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            ok, details = heartbeat.alive()
            if not ok:
                on_dead(details)
                return

    threading.Thread(target=watch, name="liveness-watchdog", daemon=True).start()
    return stop
