"""The query API's app factory (Quart + quart-schema)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo.monitoring import CommandListener
from quart import Quart, Response, g, request
from quart_schema import Info, QuartSchema

from audit_events.settings import AuditSettings, SettingsError
from query_api import admin, events, export, health, history, streams, tenants, token, ui, verify
from query_api.auth import TokenVerifier
from query_api.cache import ReadCache
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

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


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
    # One access line per request (method, path, status, request id) on Quart's handler.
    app.logger.setLevel(logging.INFO)
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
            services.events, exports=services.exports, waits=services.waits
        )

    @app.after_serving
    async def close_clients() -> None:
        services = state.services
        state.services = state.store = state.cache = state.publisher = None
        if services is not None:
            await services.close()

    @app.before_request
    async def start_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    async def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - g.get("started", 0.0))
        if "X-Cache" in response.headers:
            metrics.cache.labels(response.headers["X-Cache"]).inc()
        app.logger.info(
            "%s %s %s request_id=%s",
            request.method,
            request.path,
            response.status_code,
            g.get("request_id"),
        )
        return response

    return app
