"""Shared pieces of the API suites: the API served by Hypercorn on a real port.

No tests here; ``test_api_*`` modules import these fixtures and helpers. The
server runs in its own thread and event loop, so sync clients (schemathesis)
and async clients (httpx) both talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent
from pymongo.monitoring import CommandSucceededEvent as _Succeeded
from quart import Quart
from redis.asyncio import Redis

from audit_events.cache_keys import tenant_generation
from audit_events.codec import content_hash, event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import free_port
from query_api.app import create_app
from query_api.auth import mint_token
from query_api.services import Services

pytestmark = pytest.mark.integration
T = TypeVar("T")


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
        services: Services = self.app.config["AUDITSTREAM_SERVICES"]
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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error:
                raise RuntimeError(f"API failed to start: {self.error[0]!r}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("API did not answer /readyz in time")

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self.thread is not None:
            self.thread.join(30)


def serve_api(settings: AuditSettings) -> LiveApi:
    """Serve the API on a free port. Redis keys are not namespaced per test
    (cache generations, login counters), so this session's Redis starts empty."""
    if settings.redis_url and "127.0.0.1" in settings.redis_url:
        import redis

        with (
            contextlib.suppress(redis.RedisError),
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1) as client,
        ):
            client.flushdb()
    counter = QueryCounter()
    app = create_app(settings, mongo_listeners=[counter])
    return LiveApi(app, f"http://127.0.0.1:{free_port()}", counter, settings).start()


@pytest.fixture
def live(settings: AuditSettings) -> Iterator[LiveApi]:
    api = serve_api(settings)
    yield api
    api.stop()


@pytest.fixture
async def http(live: LiveApi) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=live.url, timeout=60.0, limits=limits) as client:
        yield client


def bearer(
    settings: AuditSettings,
    tenant: str | list[str] = "acme",
    scopes: str = "events:read events:write",
) -> dict[str, str]:
    token = mint_token(settings, subject="tester", tenant=tenant, scopes=scopes.split())
    return {"Authorization": f"Bearer {token}"}


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_event(n: int, tenant: str = "acme", **fields: Any) -> AuditEvent:
    """Event number ``n``: one second apart from T0, alternating actors and actions."""
    base: dict[str, Any] = {
        "id": f"{tenant}-{n:06d}",
        "tenant": tenant,
        "action": ("invoice.update", "invoice.create", "user.login")[n % 3],
        "occurred_at": T0 + timedelta(seconds=n),
        "actor": {"id": ("alice", "bob")[n % 2], "type": "user", "name": "Alice Bob"},
        "targets": [{"type": "invoice", "id": str(n % 10)}],
        "description": f"event number {n}",
    }
    return AuditEvent.model_validate({**base, **fields})


class Store:
    """Direct MongoDB/Redis access, writing as the processor does (insert, then bump)."""

    def __init__(self, settings: AuditSettings) -> None:
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, tz_aware=True
        )
        self.events = self.mongo[settings.mongo_db][EVENTS_COLLECTION]
        self.redis = Redis.from_url(settings.redis_url or "")

    async def put(self, events: list[AuditEvent]) -> None:
        now = datetime.now(UTC)
        if events:  # with the content hash the processor gives it (?wait=true compares it)
            docs = [{**event_to_document(e, now), "content_hash": content_hash(e)} for e in events]
            await self.events.insert_many(docs)
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant in {e.tenant for e in events}:
                pipe.incr(tenant_generation(tenant))
            await pipe.execute()

    async def close(self) -> None:
        await self.redis.aclose()
        await self.mongo.close()


@pytest.fixture
async def db(settings: AuditSettings) -> AsyncIterator[Store]:
    s = Store(settings)
    yield s
    await s.close()
