"""What one API app holds, kept in ``app.extensions["auditstream"]``.

Routes reach the settings, the token verifier, the metrics and the I/O pieces
(event store, read cache, publisher, the other clients) only through the
accessors here: one place, typed, and a route test can build an app around a
:class:`query_api.store.MemoryEventStore` without any server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from quart import Quart, current_app

from query_api.problems import Problem

if TYPE_CHECKING:
    from audit_events.settings import AuditSettings
    from query_api.app import ApiMetrics
    from query_api.auth import TokenVerifier
    from query_api.cache import ReadCache
    from query_api.services import Services
    from query_api.store import EventStore

EXTENSION = "auditstream"


class EventPublisher(Protocol):
    async def publish(
        self,
        messages: list[tuple[bytes, bytes]],
        timeout: float = 10.0,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish ``(key, value)`` records, each with ``headers``; raises ``PublishFailed``."""


@dataclass
class ApiState:
    settings: AuditSettings
    verifier: TokenVerifier
    metrics: ApiMetrics
    # Open while serving (before_serving .. after_serving):
    store: EventStore | None = None
    cache: ReadCache | None = None
    publisher: EventPublisher | None = None
    services: Services | None = None  # the clients; None with an injected store


def api_state(app: Quart | None = None) -> ApiState:
    """The state of ``app`` (default: the current app)."""
    state: ApiState = (app or current_app).extensions[EXTENSION]
    return state


def _not_ready(what: str) -> Problem:
    return Problem(503, f"the API is not serving yet: no {what}", headers={"Retry-After": "1"})


def current_settings() -> AuditSettings:
    return api_state().settings


def current_store() -> EventStore:
    store = api_state().store
    if store is None:
        raise _not_ready("event store")
    return store


def current_cache() -> ReadCache:
    cache = api_state().cache
    if cache is None:
        raise _not_ready("read cache")
    return cache


def current_publisher() -> EventPublisher:
    publisher = api_state().publisher
    if publisher is None:
        raise _not_ready("event log producer")
    return publisher


def current_services() -> Services:
    services = api_state().services
    if services is None:
        raise _not_ready("database clients")
    return services
