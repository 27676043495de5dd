"""Fixtures for talking to the pipeline: the API in-process, direct store access."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from quart import Quart
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings
from audit_events.storage import EVENTS_COLLECTION
from query_api.app import create_app
from query_api.auth import mint_token

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


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, interval: float = 0.2
) -> None:
    """Poll ``check`` until it is true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
