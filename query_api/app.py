"""The query API's app factory (Quart + quart-schema)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import logging as flask_logging
from hypercorn.typing import ASGISendCallable
from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo.monitoring import CommandListener
from quart import Quart, Response, g, request
from quart.asgi import ASGIHTTPConnection
from quart.asgi import _handle_exception as handle_exception
from quart.wrappers import Request
from quart_schema import Info, QuartSchema

from audit_events.settings import AuditSettings, SettingsError
from query_api import admin, events, export, health, history, streams, tenants, token, ui, verify
from query_api.auth import TokenVerifier
from query_api.cache import ReadCache
from query_api.deadlines import Deadlines
from query_api.docs_assets import CSS_URL as DOCS_CSS_URL
from query_api.docs_assets import JS_URL as DOCS_JS_URL
from query_api.docs_assets import bp as docs_assets_bp
from query_api.histogram import bp as histogram_bp
from query_api.masking import bp as masking_bp
from query_api.openapi import ProblemAwareOpenAPI
from query_api.problems import register_problem_handlers
from query_api.read_audit import install as install_read_audit
from query_api.retention import bp as retention_bp
from query_api.services import Services
from query_api.state import EXTENSION, ApiState, EventPublisher
from query_api.store import EventStore, MongoEventStore

BLUEPRINTS = (
    health.bp,
    events.bp,
    export.bp,
    token.bp,
    history.bp,
    ui.bp,
    verify.bp,
    admin.bp,
    tenants.bp,
    docs_assets_bp,
    histogram_bp,
    streams.bp,
    masking_bp,
    retention_bp,
)

ACCESS_FORMAT = "%s %s %s request_id=%s"  # method, path, status, request id
# app.config key: freeze the objects alive once the clients are open (set by
# ``auditstream api``, which serves one app per process; see freeze_startup_objects).
GC_FREEZE = "AUDITSTREAM_GC_FREEZE"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
# The answers' send timeouts (RESPONSE_TIMEOUT, or a response's own), checked every 0.1 s.
RESPONSE_DEADLINES = Deadlines(tick=0.1)


class DeadlineHTTPConnection(ASGIHTTPConnection):
    """Quart's HTTP connection, sending the answer under a :class:`Deadline`.

    Quart bounds the sending of every answer by ``RESPONSE_TIMEOUT`` (or the
    response's ``timeout``) with ``asyncio.wait_for``, which on Python 3.11 runs
    the sending as a task of its own: ~20 µs of a cached hit (issue 18). The
    same bound, the same outcome (the sending stops, the error is swallowed as
    Quart swallows it), checked by :data:`RESPONSE_DEADLINES` instead. Everything
    else, hooks and error handling included, is Quart's own code path.
    """

    async def handle_request(self, request: Request, send: ASGISendCallable) -> None:
        try:
            response = await self.app.handle_request(request)
        except Exception as error:
            response = await handle_exception(self.app, error)
        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout: float | None = response.timeout
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        try:
            async with RESPONSE_DEADLINES.after(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass


class AccessRecords:
    """The access line's ``LogRecord``, as ``Logger.makeRecord`` builds it.

    What is the same for every line of a process and thread (the file's name
    and module, the level's name, the thread's and process's names) is taken
    from one record made the ordinary way and copied; the message's arguments
    and the times are set per line. A record factory set by an operator
    (``logging.setLogRecordFactory``) is used as is.
    """

    def __init__(self, logger: logging.Logger, func: str) -> None:
        self._logger, self._func = logger, func
        self._fixed: dict[str, Any] = {}
        self._start = 0.0  # logging's start time (relativeCreated's origin)
        self._made_in: tuple[int, int] | None = None  # (process, thread) of _fixed

    def _made(self, args: tuple[Any, ...], line: int) -> logging.LogRecord:
        return self._logger.makeRecord(
            self._logger.name,
            logging.INFO,
            __file__,
            line,
            ACCESS_FORMAT,
            args,
            None,
            self._func,
        )

    def record(self, args: tuple[Any, ...]) -> logging.LogRecord:
        """The record of a line logged by the caller, with ``args``."""
        if logging.getLogRecordFactory() is not logging.LogRecord:
            return self._made(args, sys._getframe(1).f_lineno)
        where = (os.getpid(), threading.get_ident())
        if where != self._made_in:
            made = self._made(args, sys._getframe(1).f_lineno)
            self._fixed = dict(made.__dict__)
            self._start = made.created - made.relativeCreated / 1000
            self._made_in = where
            return made
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(self._fixed)
        now = time.time()
        fields["args"] = args
        fields["created"] = now
        fields["msecs"] = int((now - int(now)) * 1000) + 0.0
        fields["relativeCreated"] = (now - self._start) * 1000
        return record


class SecondFormatter(logging.Formatter):
    """A ``logging.Formatter`` (%-style) that formats ``asctime``'s seconds once per
    second, and a record without exception or stack text in one step."""

    def __init__(self, fmt: str | None, datefmt: str | None) -> None:
        super().__init__(fmt, datefmt)
        self._second: tuple[int, str] = (-1, "")
        self._uses_time = self.usesTime()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        # As Formatter.format does it, without its calls per step.
        record.message = record.getMessage()
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        return self._style._fmt % record.__dict__

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        return self.default_msec_format % (self._second[1], record.msecs)


class LoopLogHandler(logging.Handler):
    """The app logger's default output (stderr, Quart's format), written by the event loop.

    Quart's default handler (Flask's) resolves its stream through a context proxy
    and writes and flushes every line: on the API's access line (one per
    request) that is a write system call per request (issue 18). Here a record is
    formatted where it is logged and the lines of one event-loop iteration go
    out in one write right after it (``call_soon``); outside a running loop, at
    once. The same lines, in the same order, on the same stream. Installed in
    place of that default handler only: an operator's own logging configuration
    (a handler on the app logger or one of its parents) is left alone.
    """

    def __init__(self, formatter: logging.Formatter | None) -> None:
        super().__init__()
        if formatter is not None and type(formatter) is logging.Formatter:
            # The same format; its date's seconds formatted once per second.
            formatter = SecondFormatter(formatter._fmt, formatter.datefmt)
        self.setFormatter(formatter)
        self._lines: list[str] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None  # a write is due on this loop

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: write now
            self._write()
            return
        if self._scheduled is not loop:  # (a loop closed before its write ran: this one)
            self._scheduled = loop
            loop.call_soon(self._write)

    def _write(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = None
            lines, self._lines = self._lines, []
        if lines:
            try:
                stream = sys.stderr  # at write time, as the default handler resolves it
                stream.write("".join(lines))
                stream.flush()
            except (OSError, ValueError):  # a broken or closed stream: nowhere to say so
                pass

    def flush(self) -> None:
        self._write()


def _loop_logging(logger: logging.Logger) -> None:
    """Swap the framework's default handler on ``logger`` for :class:`LoopLogHandler`."""
    if flask_logging.default_handler in logger.handlers:
        logger.removeHandler(flask_logging.default_handler)
        if not any(isinstance(h, LoopLogHandler) for h in logger.handlers):
            logger.addHandler(LoopLogHandler(flask_logging.default_handler.formatter))


@dataclass
class ApiMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "auditstream_api_requests",
            "Requests by route and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "auditstream_api_request_seconds",
            "Request latency",
            ["route"],
            registry=self.registry,
        )
        self.cache = Counter(
            "auditstream_api_cache", "Read cache results", ["result"], registry=self.registry
        )
        # MongoDB reads behind the cache (one per key and generation across processes).
        self.cache_loads = Counter(
            "auditstream_api_cache_loads",
            "Read cache loads (MongoDB reads of a missed key)",
            registry=self.registry,
        )
        # GET /v1/verify answers whose chain did not verify (the verify-failure alert).
        self.verify_failures = Counter(
            "auditstream_verify_failures",
            "Chains GET /v1/verify found bad, by reason",
            ["reason"],
            registry=self.registry,
        )


def create_app(
    settings: AuditSettings,
    *,
    mongo_listeners: Sequence[CommandListener] = (),
    store: EventStore | None = None,
    publisher: EventPublisher | None = None,
) -> Quart:
    """Build the API. Clients open in ``before_serving`` and close in ``after_serving``.

    ``mongo_listeners`` are PyMongo command listeners for the API's client
    (tests count queries with them). ``store`` (e.g. a
    :class:`~query_api.store.MemoryEventStore`) replaces every server: no
    client is opened, reads are uncached (``X-Cache: bypass``) and writes go to
    ``publisher``; route tests use it. Raises :class:`SettingsError` when a
    connection URL or every token verification key is missing.
    """
    if store is None:
        settings.require("kafka_bootstrap", "mongo_uri", "redis_url")
    if settings.jwt_secret is None and not (settings.jwks_path or settings.jwks_url):
        raise SettingsError(
            "missing setting AUDITSTREAM_JWT_SECRET (or AUDITSTREAM_JWKS_PATH / "
            "AUDITSTREAM_JWKS_URL): no key to verify tokens with"
        )
    app = Quart(__name__)
    app.asgi_http_class = DeadlineHTTPConnection
    # One access line per request (method, path, status, request id) in Quart's
    # default format and stream, written by the event loop (LoopLogHandler).
    app.logger.setLevel(logging.INFO)
    _loop_logging(app.logger)
    verifier, metrics = TokenVerifier(settings), ApiMetrics()
    app.extensions[EXTENSION] = state = ApiState(settings, verifier, metrics)
    install_read_audit(app)  # who read the log: query_api/read_audit.py
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # /docs loads Swagger UI from the API itself (query_api/docs_assets.py), not a CDN.
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = DOCS_JS_URL
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = DOCS_CSS_URL
    QuartSchema(
        app,
        redoc_ui_path=None,  # CDN-only pages: off
        scalar_ui_path=None,
        info=Info(title="auditstream", version="1"),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
        security=[{"bearer": []}],
        openapi_provider_class=ProblemAwareOpenAPI,
    )
    # quart_schema wraps make_response to convert models and dataclasses; a Response
    # (what the routes return) has nothing to convert: it skips the conversion.
    converting = app.make_response
    plain = converting.__wrapped__  # type: ignore[attr-defined]

    async def make_response(result: Any) -> Any:
        return await (plain if isinstance(result, Response) else converting)(result)

    app.make_response = make_response  # type: ignore[method-assign]
    register_problem_handlers(app)
    # Any order: the router prefers a static segment (/v1/events/export) to a
    # variable one (/v1/events/<event_id>); test_api_store registers them reversed too.
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)

    @app.before_serving
    async def open_clients() -> None:
        await verifier.start()
        if store is not None:
            state.store, state.publisher = store, publisher
            state.cache = ReadCache(None, settings.cache_ttl_seconds, namespace="")
            return
        services = await Services.open(settings, mongo_listeners)
        state.services, state.cache, state.publisher = services, services.cache, services.publisher
        services.cache.on_load = metrics.cache_loads.inc
        state.store = MongoEventStore(
            services.events,
            exports=services.exports,
            waits=services.waits,
            settle=services.cache.settle,  # a wait's answer is seen by the next reads
        )

    @app.before_serving
    async def freeze_startup_objects() -> None:
        """Leave what startup made (modules, clients, schemas: most of the heap)
        out of the garbage collector's scans (``gc.freeze``, after one collection).

        The full scans the collector makes now and then went over all of it: on a
        cached hit ~35 µs per request of collector time, ~2x the minimal app's
        (issue 18). Objects made later are collected as before. Only where one
        app is served per process (``auditstream api`` sets ``GC_FREEZE``): in a
        test process garbage cycles alive at a freeze would never be freed.
        """
        if app.config.get(GC_FREEZE):
            gc.collect()
            gc.freeze()

    @app.after_serving
    async def close_clients() -> None:
        services = state.services
        state.services = state.store = state.cache = state.publisher = None
        if services is not None:
            await services.close()

    # The metrics' labelled children, looked up once per label set (prometheus_client's
    # labels() takes a lock and builds the key on every call).
    logger = app.logger
    counted: dict[tuple[str, str, int], Any] = {}
    timed: dict[str, Any] = {}
    cached: dict[str, Any] = {}

    access = AccessRecords(logger, "finish_request")

    @app.before_request
    async def start_request() -> None:
        # getlist: Headers.get raises and catches a KeyError when the header is absent.
        incoming = request.headers.getlist("X-Request-ID")
        ctx = g._get_current_object()  # one proxy lookup, not two
        if incoming and _REQUEST_ID.match(incoming[0]):
            ctx.request_id = incoming[0]
        else:
            ctx.request_id = os.urandom(16).hex()  # 32 hex digits, as uuid4().hex
        ctx.started = time.perf_counter()

    @app.after_request
    async def finish_request(response: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup each
        ctx = g._get_current_object()
        request_id = getattr(ctx, "request_id", "")
        headers = response.headers
        headers["X-Request-ID"] = request_id
        route = req.url_rule.rule if req.url_rule else "unmatched"
        status = response.status_code
        key = (route, req.method, status)
        if (count := counted.get(key)) is None:
            count = counted[key] = metrics.requests.labels(route, req.method, str(status))
        count.inc()
        if (latency := timed.get(route)) is None:
            latency = timed[route] = metrics.latency.labels(route)
        latency.observe(time.perf_counter() - getattr(ctx, "started", 0.0))
        if (result := headers.get("X-Cache")) is not None:
            if (cache := cached.get(result)) is None:
                cache = cached[result] = metrics.cache.labels(result)
            cache.inc()
        if logger.isEnabledFor(logging.INFO):  # the access line
            # As logger.info() would, without its stack walk for the caller (the same
            # record: this module, function and line).
            logger.handle(access.record((req.method, req.path, status, request_id or None)))
        return response

    return app
