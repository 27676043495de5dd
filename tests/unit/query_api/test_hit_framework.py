"""The cached hit's cheaper framework pieces keep their behaviour (issue 18).

- :class:`~query_api.deadlines.Deadlines` (one timer for many timeouts) times
  out as ``asyncio.timeout`` does, and a cancellation from elsewhere stays one;
- the answer's send timeout (Quart's ``RESPONSE_TIMEOUT``) still stops a stalled
  answer, now without a task per request (``DeadlineHTTPConnection``);
- the access line's record (``AccessRecords``) is the record
  ``Logger.makeRecord`` builds, and ``SecondFormatter`` formats as the default
  formatter;
- a list query string parsed once answers every tenant its own page;
- a hot page's event count (read auditing) is parsed once, not on every hit;
- the objects startup made are frozen out of the collector's scans where one app
  is served per process, and only there.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from quart import Response

from audit_events.codec import event_to_document
from audit_events.schema import AuditEvent
from audit_events.settings import AuditSettings
from query_api.app import (
    GC_FREEZE,
    AccessRecords,
    DeadlineHTTPConnection,
    SecondFormatter,
    create_app,
)
from query_api.auth import mint_token
from query_api.deadlines import Deadlines
from query_api.read_audit import count_in
from query_api.store import MemoryEventStore

pytestmark = pytest.mark.unit
SECRET = "unit-secret-0123456789abcdef-0123456789"


def settings() -> AuditSettings:
    return AuditSettings(jwt_secret=SecretStr(SECRET), mongo_db="unit")


async def test_a_deadline_times_out_like_asyncio_timeout() -> None:
    deadlines = Deadlines(tick=0.02)
    began = time.perf_counter()
    with pytest.raises(TimeoutError):
        async with deadlines.after(0.1):
            await asyncio.sleep(10)
    assert 0.09 < time.perf_counter() - began < 1.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its cancellation withdrawn
    async with deadlines.after(1.0):  # done in time: nothing happens
        await asyncio.sleep(0.01)
    async with deadlines.after(None):  # no deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert task.cancelling() == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick=0.02)

    async def waiting() -> None:
        async with deadlines.after(10.0):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(waiting())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stalled_answer_is_still_stopped_at_the_response_timeout() -> None:
    app = create_app(settings(), store=MemoryEventStore())
    assert app.asgi_http_class is DeadlineHTTPConnection
    app.config["RESPONSE_TIMEOUT"] = 0.3
    sent: list[bytes] = []

    @app.get("/stall")
    async def stall() -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first"
            sent.append(b"first")
            await asyncio.sleep(30)
            yield b"never"

        return Response(body())

    async with app.test_app():
        began = time.perf_counter()
        response = await app.test_client().get("/stall")
        assert response.status_code == 200
        assert await response.get_data() == b"first"
        assert time.perf_counter() - began < 5.0  # the timeout, not the 30 s stall
    assert sent == [b"first"]


def test_the_access_record_is_the_one_make_record_builds() -> None:
    logger = logging.getLogger("query_api.app")
    records = AccessRecords(logger, "finish_request")
    args = ("GET", "/v1/events", 200, "abc")
    made = [records.record(args) for _ in range(3)]  # the first made, the others copied
    line = made[0].lineno
    expected = logger.makeRecord(
        logger.name, logging.INFO, made[0].pathname, line, made[0].msg, args, None, "finish_request"
    )
    timing = {"created", "msecs", "relativeCreated"}
    for record in made:
        assert type(record) is logging.LogRecord
        got = {k: v for k, v in vars(record).items() if k not in timing}
        assert got == {k: v for k, v in vars(expected).items() if k not in timing}
        assert record.getMessage() == "GET /v1/events 200 request_id=abc"
        assert abs(record.created - time.time()) < 5
        assert record.msecs == int((record.created - int(record.created)) * 1000)
        assert abs(record.relativeCreated - expected.relativeCreated) < 5000
    assert made[1].args is args and made[1] is not made[2]


def test_an_operators_record_factory_is_used() -> None:
    seen: list[Any] = []
    factory = logging.getLogRecordFactory()

    def custom(*a: Any, **kw: Any) -> logging.LogRecord:
        record = factory(*a, **kw)
        seen.append(record)
        return record

    logging.setLogRecordFactory(custom)
    try:
        records = AccessRecords(logging.getLogger("query_api.app"), "finish_request")
        made = [records.record(("GET", "/", 200, "x")) for _ in range(2)]
    finally:
        logging.setLogRecordFactory(factory)
    assert seen == made


def test_the_second_formatter_formats_as_the_default() -> None:
    fmt = "[%(asctime)s] %(levelname)s in %(module)s: %(message)s"
    default, cached = logging.Formatter(fmt), SecondFormatter(fmt, None)
    for created in (1_700_000_000.0, 1_700_000_000.123, 1_700_000_000.999, 1_700_000_001.5):
        record = logging.makeLogRecord({"msg": "m", "levelno": 20, "levelname": "INFO"})
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert cached.format(record) == default.format(record)
    dated = SecondFormatter(fmt, "%H:%M")  # a date format of its own: the default's way
    assert dated.format(record) == logging.Formatter(fmt, "%H:%M").format(record)


async def test_one_parsed_query_string_answers_each_tenant_its_own_page() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        AuditEvent.model_validate(
            {"id": f"e-{t}", "tenant": t, "action": "a.b", "occurred_at": t0, "actor": {"id": "a"}}
        )
        for t in ("acme", "globex")
    ]
    store = MemoryEventStore([event_to_document(e, t0) for e in events])
    app = create_app(settings(), store=store)

    def token(tenant: str) -> dict[str, str]:
        t = mint_token(settings(), subject="s", tenant=tenant, scopes=["events:read"])
        return {"Authorization": f"Bearer {t}"}

    async with app.test_app():
        client = app.test_client()
        for _ in range(2):
            for tenant in ("acme", "globex"):
                resp = await client.get("/v1/events?limit=5", headers=token(tenant))
                assert resp.status_code == 200
                assert [e["tenant"] for e in (await resp.get_json())["data"]] == [tenant]
            bad = await client.get("/v1/events?limit=0", headers=token("acme"))
            assert bad.status_code == 400


def test_a_hot_pages_event_count_is_parsed_once() -> None:
    count_in.cache_clear()
    page = orjson.dumps({"data": [{"id": str(n)} for n in range(7)], "next_cursor": None})
    for _ in range(3):
        assert count_in(bytes(bytearray(page))) == 7  # equal bytes, not the same object
    assert count_in.cache_info().misses == 1
    assert count_in(orjson.dumps({"events_applied": 4})) == 4
    assert count_in(b"not json") == 0


async def test_startup_objects_are_frozen_only_when_asked() -> None:
    gc.unfreeze()
    try:
        app = create_app(settings(), store=MemoryEventStore())
        async with app.test_app():
            assert gc.get_freeze_count() == 0  # a test process: never frozen
        app = create_app(settings(), store=MemoryEventStore())
        app.config[GC_FREEZE] = True  # as auditstream api sets it
        async with app.test_app():
            assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
