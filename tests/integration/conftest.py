"""Fixtures for talking to the pipeline: the API in-process or on a real port, direct
store access. Plain helpers (``eventually``, ``make_event``, ``served_api``, …) live
in ``tests/helpers.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from quart import Quart
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import Server, mongo_server
from query_api.app import create_app
from query_api.auth import mint_token
from tests.helpers import LiveApi, Store, freeze, serve_api

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(settings: AuditSettings) -> AsyncIterator[Quart]:
    """The query API with its clients open (before_serving ran)."""
    app = create_app(settings)
    async with app.test_app():
        yield app


@pytest.fixture
def client(api: Quart) -> Client:
    return api.test_client()


@pytest.fixture
def token(settings: AuditSettings) -> Callable[..., str]:
    def make(
        tenant: str | list[str] = "acme", scopes: str = "events:read events:write", **kw: Any
    ) -> str:
        return mint_token(settings, subject="tester", tenant=tenant, scopes=scopes.split(), **kw)

    return make


@pytest.fixture
def auth(token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    def make(
        tenant: str | list[str] = "acme", scopes: str = "events:read events:write"
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(tenant, scopes)}"}

    return make


@pytest.fixture
async def store(settings: AuditSettings) -> AsyncIterator[AsyncCollection[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_uri, tz_aware=True)
    yield client[settings.mongo_db][EVENTS_COLLECTION]
    await client.close()


@pytest.fixture
def live(settings: AuditSettings) -> Iterator[LiveApi]:
    """The API served by Hypercorn on a free port, in its own thread and loop."""
    api = serve_api(settings)
    yield api
    api.stop()


@pytest.fixture
async def http(live: LiveApi) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``live``."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=live.url, timeout=60.0, limits=limits) as client:
        yield client


@pytest.fixture
async def db(settings: AuditSettings) -> AsyncIterator[Store]:
    """Direct MongoDB/Redis access that writes as the processor does."""
    s = Store(settings)
    yield s
    await s.close()


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[Server]:
    """A SecantusDB for this test only: it gets frozen (SIGSTOP)."""
    server = mongo_server(tmp_path / "own-mongo")
    server.start()
    try:
        yield server
    finally:
        freeze(server, False)
        server.stop()
