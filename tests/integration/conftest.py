"""Fixtures for talking to the pipeline: the API in-process, direct store access."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from quart import Quart
from quart.typing import TestClientProtocol as Client

from audit_events.settings import AuditSettings, settings_env
from audit_events.storage import EVENTS_COLLECTION
from auditstream.embedded import Server, free_port, mongo_server
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


def nested(depth: int) -> Any:
    """``{"d": {"d": … 1}}``, ``depth`` objects deep."""
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


def freeze(server: Server, frozen: bool) -> None:
    """SIGSTOP (``frozen``) or SIGCONT the server's process group, if it still runs."""
    assert server.proc is not None
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


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
        for _ in range(200):
            if server.done():
                server.result()
            try:
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the API did not become ready")
    try:
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
