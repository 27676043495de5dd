"""The API's access line and request metrics (issue 18: cheaper, unchanged output).

One line per request in Quart's default format on stderr, ``METHOD path status
request_id=...``, now written by the event loop (query_api/app.py
LoopLogHandler) instead of the framework's handler; the record still reaches
the logging tree (caplog, an operator's handlers) with the same module and
function; the request counters count as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator

import pytest
from flask import logging as flask_logging
from pydantic import SecretStr
from quart import Quart

from audit_events.settings import AuditSettings
from query_api.app import LoopLogHandler, create_app
from query_api.auth import mint_token
from query_api.state import api_state
from query_api.store import MemoryEventStore

pytestmark = pytest.mark.unit
SECRET = "unit-secret-0123456789abcdef-0123456789"
LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] INFO in app: (.*)$")


def settings() -> AuditSettings:
    return AuditSettings(jwt_secret=SecretStr(SECRET), mongo_db="unit")


@contextlib.contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """No logging configured (as in ``auditstream api``): pytest's own handlers on
    the root logger would make the framework add none to the app's logger."""
    root, logger = logging.getLogger(), logging.getLogger("query_api.app")
    saved = root.handlers[:], logger.handlers[:]
    root.handlers.clear()
    logger.handlers.clear()
    try:
        yield logger
    finally:
        root.handlers[:], logger.handlers[:] = saved


@pytest.fixture
async def app() -> AsyncIterator[Quart]:
    with bare_logging():
        api = create_app(settings(), store=MemoryEventStore())
        async with api.test_app():
            yield api


def auth() -> dict[str, str]:
    token = mint_token(settings(), subject="t", tenant="acme", scopes=["events:read"])
    return {"Authorization": f"Bearer {token}"}


async def test_one_access_line_per_request_in_order_on_stderr(
    app: Quart, capsys: pytest.CaptureFixture[str]
) -> None:
    client = app.test_client()
    capsys.readouterr()
    for n in range(3):
        resp = await client.get("/v1/events?limit=2", headers={**auth(), "X-Request-ID": f"r{n}"})
        assert resp.status_code == 200 and resp.headers["X-Request-ID"] == f"r{n}"
    assert (await client.get("/v1/events/nope", headers=auth())).status_code == 404
    await asyncio.sleep(0)  # the loop's write after this iteration
    lines = [m.group(1) for m in map(LINE.match, capsys.readouterr().err.splitlines()) if m]
    assert lines[:3] == [f"GET /v1/events 200 request_id=r{n}" for n in range(3)]
    assert re.fullmatch(r"GET /v1/events/nope 404 request_id=[0-9a-f]{32}", lines[3])
    assert len(lines) == 4


async def test_the_record_still_reaches_the_logging_tree(
    app: Quart, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=app.logger.name):
        await app.test_client().get("/v1/events", headers={**auth(), "X-Request-ID": "abc"})
    [record] = [r for r in caplog.records if r.getMessage().startswith("GET ")]
    assert record.getMessage() == "GET /v1/events 200 request_id=abc"
    assert (record.levelno, record.name, record.module) == (logging.INFO, "query_api.app", "app")
    assert record.funcName == "finish_request"


def test_the_framework_handler_is_replaced_once_and_an_operators_is_kept() -> None:
    with bare_logging() as logger:
        first, second = (create_app(settings(), store=MemoryEventStore()) for _ in range(2))
        assert first.logger is second.logger is logger  # one logger per module name
        assert flask_logging.default_handler not in logger.handlers
        assert sum(isinstance(h, LoopLogHandler) for h in logger.handlers) == 1
        logger.handlers.clear()
        logging.getLogger().addHandler(logging.StreamHandler())  # an operator's configuration
        create_app(settings(), store=MemoryEventStore())
        assert logger.handlers == []  # the framework added none, nor did we


def test_outside_a_loop_a_line_is_written_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    handler = LoopLogHandler(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "now", "levelno": logging.INFO}))
    assert capsys.readouterr().err == "now\n"


async def test_request_metrics_count_as_before(app: Quart) -> None:
    client = app.test_client()
    for _ in range(2):
        assert (await client.get("/v1/events", headers=auth())).status_code == 200
    assert (await client.get("/v1/events")).status_code == 401
    registry = api_state(app).metrics.registry
    sample = registry.get_sample_value
    labels = {"route": "/v1/events", "method": "GET"}
    assert sample("auditstream_api_requests_total", {**labels, "status": "200"}) == 2
    assert sample("auditstream_api_requests_total", {**labels, "status": "401"}) == 1
    assert sample("auditstream_api_request_seconds_count", {"route": "/v1/events"}) == 3
    assert sample("auditstream_api_cache_total", {"result": "bypass"}) == 2
