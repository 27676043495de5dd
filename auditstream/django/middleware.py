"""Django middleware: one audit event per HTTP request, under WSGI and ASGI alike.

::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "auditstream.django.middleware.AuditMiddleware",   # after authentication
    ]

Each request yields ``http.<method>`` with the path as target, the status, latency,
client IP, user agent, ``X-Request-ID`` and query string, the outcome from the status
(``denied`` for 401/403, ``failure`` from 400), and the logged-in user as actor
(``{id: pk, type: "user", name: username}``). It is the Django counterpart of
:class:`producers.asgi.AuditMiddleware` (which cannot see Django's user): use it
without django-easy-audit, or instead of easyaudit's request records
(``DJANGO_EASY_AUDIT_WATCH_REQUEST_EVENTS = False``), which carry no status or latency.

Settings (``settings.AUDITSTREAM``): ``TENANT`` or ``TENANT_RESOLVER`` (called as
``resolver("http", info, request)``), ``MIDDLEWARE_EXCLUDE`` (path regexes, default
``^/static/``, ``^/media/``, ``^/favicon.ico$``). Events go to the process's durable
producer (:func:`producers.django_backend.get_producer`): each is committed to the
spool file before the response leaves (~0.1 ms), then sent to Kafka by a background
thread (under ASGI the event is built in ``sync_to_async``'s thread, since reading
``request.user`` may query the database). Nothing raises into the request: a failure
is logged on ``auditstream.django``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from producers import django_backend

log = logging.getLogger("auditstream.django")

DEFAULT_EXCLUDE = (r"^/static/", r"^/media/", r"^/favicon\.ico$")
_CRUD = {"GET": "r", "HEAD": "r", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}


@lru_cache(maxsize=8)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def _options() -> dict[str, Any]:
    raw = getattr(django_settings, "AUDITSTREAM", {}) or {}
    return dict(raw) if isinstance(raw, dict) else {}


def request_event(request: HttpRequest, status: int, seconds: float, tenant: str) -> dict[str, Any]:
    """The event of one answered request."""
    method = str(request.method or "GET").upper()
    path = str(request.path)
    meta = request.META
    user = getattr(request, "user", None)
    event: dict[str, Any] = {
        "tenant": tenant,
        "action": f"http.{method.lower()}",
        "targets": [{"type": "http.path", "id": path[:256]}],
        "outcome": "success" if status < 400 else "denied" if status in (401, 403) else "failure",
        "metadata": {
            "source": "django-middleware",
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
        },
    }
    if method in _CRUD:
        event["crud"] = _CRUD[method]
    if meta.get("QUERY_STRING"):
        event["metadata"]["query_string"] = str(meta["QUERY_STRING"])[:2048]
    if user is not None and getattr(user, "is_authenticated", False):
        event["actor"] = {"id": str(user.pk), "type": "user", "name": user.get_username()}
    context = {
        "ip": meta.get("REMOTE_ADDR"),
        "user_agent": str(meta.get("HTTP_USER_AGENT") or "")[:1024],
        "request_id": str(meta.get("HTTP_X_REQUEST_ID") or "")[:256],
    }
    context = {k: str(v) for k, v in context.items() if v}
    if context:
        event["context"] = context
    return event


class AuditMiddleware:
    """Records every request it wraps; sync under WSGI, async under ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        start = time.perf_counter()
        response: HttpResponse = self.get_response(request)
        self.record(request, response, time.perf_counter() - start)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        pending: Awaitable[HttpResponse] = self.get_response(request)
        response = await pending
        # In a thread: ``request.user`` and a tenant resolver may query the database.
        await sync_to_async(self.record)(request, response, time.perf_counter() - start)
        return response

    def record(self, request: HttpRequest, response: HttpResponse, seconds: float) -> None:
        """Emit the request's event; never raises."""
        try:
            options = _options()
            exclude = tuple(options.get("MIDDLEWARE_EXCLUDE", DEFAULT_EXCLUDE))
            if any(p.search(request.path) for p in _compiled(exclude)):
                return
            status = int(response.status_code)
            tenant = self.tenant(request, status, options)
            if not tenant:
                return
            django_backend.record_event(request_event(request, status, seconds, tenant))
        except Exception:
            log.exception("auditstream: the request event of %s was not recorded", request.path)

    def tenant(self, request: HttpRequest, status: int, options: dict[str, Any]) -> str | None:
        resolver = options.get("TENANT_RESOLVER")
        if resolver:
            fn = import_string(resolver) if isinstance(resolver, str) else resolver
            info = {"url": request.path, "method": request.method, "status": status}
            tenant = fn("http", info, request)
            return None if tenant is None else str(tenant)
        tenant = options.get("TENANT")
        if not tenant:
            log.error("auditstream: settings.AUDITSTREAM needs TENANT or TENANT_RESOLVER")
            return None
        return str(tenant)
