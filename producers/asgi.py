"""ASGI3 middleware: one audit event per HTTP request (Quart, Starlette, FastAPI…).

    app.asgi_app = AuditMiddleware(app.asgi_app, producer, tenant="acme")   # Quart
    app.add_middleware(AuditMiddleware, producer=producer, tenant="acme")   # Starlette

Each request yields ``http.<method>`` with the method, path, status, latency,
client IP, user agent and request id, and the actor from a pluggable resolver.
Events go through :meth:`AuditProducer.emit_nowait`: the request never waits for
Kafka, and with a spool configured nothing is lost while Kafka is down. A failure
to build or queue the event is logged and counted (``errors``), never raised into
the host application.

The middleware starts the producer on ASGI ``lifespan.startup`` (or lazily on the
first request) and closes it on ``lifespan.shutdown`` when ``manage_producer``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from audit_events.ids import uuid7
from audit_events.schema import Actor
from producers.producer import AuditProducer

log = logging.getLogger("auditstream.producer.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Returns the actor of a request: an :class:`Actor`, a dict, a user id, or None.
ActorResolver = Callable[[Scope], Actor | dict[str, Any] | str | None]
TenantResolver = Callable[[Scope], str | None]

_CRUD = {"GET": "r", "HEAD": "r", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def default_actor(scope: Scope) -> Actor | dict[str, Any] | str | None:
    """Starlette's ``scope["user"]`` when authenticated (``identity``), else no actor."""
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        ident = getattr(user, "identity", None) or getattr(user, "display_name", None)
        return str(ident) if ident else None
    return None


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403) else "failure"


class AuditMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        producer: AuditProducer,
        *,
        tenant: str | TenantResolver,
        actor: ActorResolver = default_actor,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (r"^/healthz$", r"^/readyz$", r"^/metrics$", r"^/static/"),
        methods: Iterable[str] | None = None,
        request_id_header: str = "x-request-id",
        trust_forwarded: bool = False,
        manage_producer: bool = True,
    ) -> None:
        """``include``/``exclude``: path regexes (``include`` empty = every path);
        ``methods``: only these methods (None = all); ``trust_forwarded``: take the
        client IP from ``X-Forwarded-For`` (only behind a proxy you control)."""
        self.app = app
        self.producer = producer
        self._tenant = tenant
        self._actor = actor
        self._include = [re.compile(p) for p in include]
        self._exclude = [re.compile(p) for p in exclude]
        self._methods = {m.upper() for m in methods} if methods is not None else None
        self._request_id_header = request_id_header.lower().encode()
        self._trust_forwarded = trust_forwarded
        self._manage = manage_producer
        self._started = False
        self.emitted = 0
        self.errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._manage:
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if scope["type"] != "http" or not self._wanted(scope):
            await self.app(scope, receive, send)
            return
        if not self._started and self._manage:
            await self._start()
        start = time.perf_counter()
        status = 500
        request_id = _header(scope, self._request_id_header) or uuid7()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status, time.perf_counter() - start, request_id)

    def _wanted(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if self._methods is not None and scope.get("method") not in self._methods:
            return False
        if self._include and not any(p.search(path) for p in self._include):
            return False
        return not any(p.search(path) for p in self._exclude)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        try:
            method = str(scope.get("method", "GET")).upper()
            tenant = self._tenant(scope) if callable(self._tenant) else self._tenant
            if not tenant:
                return  # nothing to attribute the request to
            client = scope.get("client") or (None, None)
            ip = client[0]
            if self._trust_forwarded and (fwd := _header(scope, b"x-forwarded-for")):
                ip = fwd.split(",")[0].strip()
            path = scope.get("path", "/")
            self.producer.emit_nowait(
                tenant=tenant,
                action=f"http.{method.lower()}",
                crud=_CRUD.get(method),
                actor=self._actor(scope),
                targets=[{"type": "http.path", "id": path[:256]}],
                outcome="success"
                if status < 400
                else "denied"
                if status in (401, 403)
                else "failure",
                context={
                    "ip": ip,
                    "user_agent": (_header(scope, b"user-agent") or "")[:1024] or None,
                    "request_id": request_id[:256],
                },
                metadata={
                    "method": method,
                    "path": path,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                },
            )
            self.emitted += 1
        except Exception:  # never break the host app; loud in the logs instead
            self.errors += 1
            log.exception("could not record the audit event of %s", scope.get("path"))

    async def _start(self) -> None:
        self._started = True
        try:
            await self.producer.start(wait_connected=False)
        except Exception:
            self.errors += 1
            log.exception("could not start the audit producer")

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and not self._started:
                await self._start()
            return message

        return wrapped

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete" and self._started:
                try:
                    await self.producer.close()
                except Exception:
                    log.exception("closing the audit producer")
            await send(message)

        return wrapped
