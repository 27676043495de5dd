"""Plain helpers shared by the test suites (no fixtures here: those live in conftests).

- ``eventually`` (and its sync twin ``eventually_sync``): the one way a test waits
  for something another process or task does.
- ``make_event`` / ``event_body`` / ``event_record``: the one event factory, as a
  model, as the JSON a producer POSTs, or as the (key, value) Kafka record.
- The API served by Hypercorn on a real port (``LiveApi``/``serve_api``, in its own
  thread and loop, for sync and async clients; ``served_api`` in the caller's loop),
  direct store access (``Store``), tokens (``bearer``), CLI runs, metric scrapes.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent
from pymongo.monitoring import CommandSucceededEvent as _Succeeded
from quart import Quart
from redis.asyncio import Redis

from audit_events.cache_keys import cache_namespace, tenant_generation
from audit_events.codec import content_hash, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import Server, free_port
from query_api.app import create_app
from query_api.auth import mint_token
from query_api.services import Services
from query_api.state import api_state

T = TypeVar("T")

# --------------------------------------------------------------------------- waiting


def _deadline_passed(started: float, timeout: float) -> bool:
    return time.monotonic() - started >= timeout


def _failure(what: str, why: str, detail: Callable[[], str] | None) -> str:
    return f"{what}: {why}" + (f"\n{detail()}" if detail is not None else "")


def _abort_reason(abort: Callable[[], str | None] | None) -> str | None:
    return abort() if abort is not None else None


async def eventually(
    check: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    *,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Call ``check`` (sync or async) until it returns something truthy, and return
    that; fail after ``timeout`` seconds. ``abort`` (optional) is asked before every
    try: a string it returns fails the wait at once (e.g. "the worker exited").
    ``detail`` (optional) adds context to the failure (e.g. the tail of a log)."""
    started = time.monotonic()
    while True:
        reason = _abort_reason(abort)
        if reason:
            raise AssertionError(_failure(what, reason, detail))
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if _deadline_passed(started, timeout):
            raise AssertionError(_failure(what, f"not met within {timeout:g}s", detail))
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    *,
    what: str = "condition",
    abort: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> Any:
    """``eventually`` for sync tests (``check``, ``abort``, ``detail`` plain callables)."""
    started = time.monotonic()
    while True:
        reason = _abort_reason(abort)
        if reason:
            raise AssertionError(_failure(what, reason, detail))
        value = check()
        if value:
            return value
        if _deadline_passed(started, timeout):
            raise AssertionError(_failure(what, f"not met within {timeout:g}s", detail))
        time.sleep(interval)


def exited(proc: subprocess.Popen[Any] | None) -> Callable[[], str | None]:
    """An ``abort`` for ``eventually``: fail the wait as soon as ``proc`` exited."""

    def check() -> str | None:
        assert proc is not None
        code = proc.poll()
        return None if code is None else f"the process exited with {code}"

    return check


# --------------------------------------------------------------------------- events

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event_body(n: int = 0, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    """Event number ``n`` as JSON (what a producer POSTs or writes to the topic):
    id ``{tenant}-{n:06d}``, one second apart from ``T0``, alternating actors and
    actions, invoice ``n % 10`` as target. ``fields`` override (``occurred_at=None``
    leaves the time to the ingesting side)."""
    body: dict[str, Any] = {
        "id": f"{tenant}-{n:06d}",
        "tenant": tenant,
        "action": ("invoice.update", "invoice.create", "user.login")[n % 3],
        "occurred_at": (T0 + timedelta(seconds=n)).isoformat(),
        "actor": {"id": ("alice", "bob")[n % 2], "type": "user", "name": "Alice Bob"},
        "targets": [{"type": "invoice", "id": str(n % 10)}],
        "description": f"event number {n}",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def make_event(n: int = 0, tenant: str = "acme", **fields: Any) -> AuditEvent:
    """``event_body`` as the validated model."""
    return AuditEvent.model_validate(event_body(n, tenant, **fields))


def event_record(n: int = 0, tenant: str = "acme", **fields: Any) -> tuple[bytes, bytes]:
    """``event_body`` as the Kafka record a producer writes: (key = tenant, JSON value)."""
    body = event_body(n, tenant, **fields)
    return str(body["tenant"]).encode(), orjson.dumps(body)


def bearer(
    settings: AuditSettings,
    tenant: str | list[str] = "acme",
    scopes: str = "events:read events:write",
) -> dict[str, str]:
    token = mint_token(settings, subject="tester", tenant=tenant, scopes=scopes.split())
    return {"Authorization": f"Bearer {token}"}


def nested(depth: int) -> Any:
    """``{"d": {"d": … 1}}``, ``depth`` objects deep."""
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


# --------------------------------------------------------------------------- stores, CLI


class Store:
    """Direct MongoDB/Redis access, writing as the processor does (insert, then bump)."""

    def __init__(self, settings: AuditSettings) -> None:
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True
        )
        self.events = self.mongo[settings.mongo_db][EVENTS_COLLECTION]
        self.redis = Redis.from_url(settings.redis_url or "")
        self.namespace = cache_namespace(settings)

    async def put(self, events: list[AuditEvent]) -> None:
        now = datetime.now(UTC)
        if events:  # with the content hash the processor gives it (?wait=true compares it)
            docs = [{**event_to_document(e, now), "content_hash": content_hash(e)} for e in events]
            await self.events.insert_many(docs)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in {e.tenant for e in events}:
                pipe.incr(tenant_generation(self.namespace, tenant))
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()
        await self.mongo.close()


async def by_seq(coll: AsyncCollection[dict[str, Any]], seq: int) -> dict[str, Any]:
    """acme's stored event at ``seq`` (asserted to exist)."""
    doc = await coll.find_one({"tenant": "acme", "seq": seq})
    assert doc is not None
    return doc


def run_cli(settings: AuditSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m auditstream <args>`` on ``settings`` (+ ``env``), output captured."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AUDITSTREAM_")}
    full.update(settings_env(settings))
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "auditstream", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of the Prometheus endpoint on ``port``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.labels
    }


def freeze(server: Server, frozen: bool) -> None:
    """SIGSTOP (``frozen``) or SIGCONT the server's process group, if it still runs."""
    assert server.proc is not None
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


# --------------------------------------------------------------------------- the API on a port


class QueryCounter(CommandListener):
    """Counts ``find`` commands on the events collection (PyMongo command monitoring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finds = 0

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == EVENTS_COLLECTION:
            with self._lock:
                self.finds += 1

    def succeeded(self, event: _Succeeded) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@dataclass
class LiveApi:
    """A running API: ``url``, its Quart ``app`` and a query counter."""

    app: Quart
    url: str
    counter: QueryCounter
    settings: AuditSettings
    thread: threading.Thread | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    error: list[BaseException] = field(default_factory=list)

    @property
    def services(self) -> Services:
        services = api_state(self.app).services
        assert services is not None, "the API is not serving"
        return services

    async def call(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        """Run ``fn(services)`` in the server's event loop (its clients live there)."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(fn(self.services), self.loop)  # type: ignore[arg-type]
        return await asyncio.wrap_future(future)

    def start(self, timeout: float = 90.0) -> LiveApi:
        started = threading.Event()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            started.set()
            config = Config()
            config.bind = [self.url.removeprefix("http://")]
            config.accesslog = None
            config.graceful_timeout = 2.0
            config.keep_alive_timeout = 120.0  # slow machines: never drop an idle test client
            await serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start()/stop()
                self.error.append(exc)

        self.thread = threading.Thread(target=run, name="live-api", daemon=True)
        self.thread.start()
        started.wait(10)

        def failed() -> str | None:
            return f"the API failed to start: {self.error[0]!r}" if self.error else None

        def answers() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=5).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        eventually_sync(answers, timeout, 0.1, what="API /readyz", abort=failed)
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self.thread is not None:
            self.thread.join(30)


def serve_api(settings: AuditSettings) -> LiveApi:
    """Serve the API on a free port. No FLUSHDB: Redis keys (cache generations and
    values, login counters) carry the test's database as their namespace."""
    counter = QueryCounter()
    app = create_app(settings, mongo_listeners=[counter])
    return LiveApi(app, f"http://127.0.0.1:{free_port()}", counter, settings).start()


@asynccontextmanager
async def served_api(settings: AuditSettings) -> AsyncIterator[str]:
    """The API served by Hypercorn on a free port in this event loop; yields its URL
    once /readyz answers 200."""
    app = create_app(settings)
    config = Config()
    port = free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:

        async def ready() -> bool:
            if server.done():
                server.result()
            try:
                return (await http.get(f"{url}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, 10, 0.05, what="the API did not become ready")
    try:
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
