"""A django-easy-audit logging backend that publishes to auditstream.

In the Django settings::

    DJANGO_EASY_AUDIT_LOGGING_BACKEND = "producers.django_backend.AuditstreamBackend"
    AUDITSTREAM = {
        "TENANT": "acme",                  # or "TENANT_RESOLVER": "myapp.audit.tenant_of"
        "SERVICE": "shop",                 # source.service of every event
        "SPOOL_PATH": BASE_DIR / "audit-spool.db",   # strongly recommended
        # optional: "BOOTSTRAP", "TOPIC", "IDEMPOTENCE", "OPTIONS": {ProducerConfig kwargs}
    }

Unset Kafka options come from the ``AUDITSTREAM_*`` environment (``AuditSettings``).
A tenant resolver is called as ``resolver(kind, info, request)`` with kind ``crud``,
``login`` or ``request`` and returns the tenant (None skips the record).

easyaudit creates its backend objects at import time without arguments, so the
producer is one lazily started :class:`~producers.SyncAuditProducer` per process
(flushed at exit); :func:`close_producer` stops it. Records are queued with
``emit_nowait``: a request never waits for Kafka, and with a spool nothing is lost
while Kafka is down. Errors are raised to easyaudit, which logs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.contrib.auth import get_user_model  # type: ignore[import-untyped]
from django.contrib.contenttypes.models import ContentType  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from audit_events.settings import load_settings
from producers import django_mapping as mapping
from producers.config import ProducerConfig
from producers.sync import SyncAuditProducer

_lock = threading.Lock()
_state: dict[str, SyncAuditProducer] = {}


def _options() -> dict[str, Any]:
    return dict(getattr(django_settings, "AUDITSTREAM", {}) or {})


def producer_config(options: Mapping[str, Any]) -> ProducerConfig:
    """The producer configuration from the ``AUDITSTREAM`` dict and the environment."""
    env = load_settings()
    overrides: dict[str, Any] = dict(options.get("OPTIONS") or {})
    if options.get("BOOTSTRAP"):
        overrides["bootstrap"] = options["BOOTSTRAP"]
    elif env.kafka_bootstrap is None:
        env.require("kafka_bootstrap")
    if options.get("TOPIC"):
        overrides["topic"] = options["TOPIC"]
    if "IDEMPOTENCE" in options:
        overrides["idempotence"] = bool(options["IDEMPOTENCE"])
    if options.get("SERVICE"):
        overrides["service"] = str(options["SERVICE"])
    if options.get("SPOOL_PATH"):
        overrides["spool_path"] = Path(options["SPOOL_PATH"])
    if env.kafka_bootstrap is None:
        return ProducerConfig(**overrides)
    return ProducerConfig.from_settings(env, **overrides)


def get_producer() -> SyncAuditProducer:
    """The process's producer, started on first use."""
    with _lock:
        producer = _state.get("producer")
        if producer is None:
            config = producer_config(_options())
            producer = SyncAuditProducer(config)
            producer.start(wait_connected=config.spool_path is None)
            _state["producer"] = producer
        return producer


def close_producer(timeout: float = 30.0) -> None:
    """Flush and stop the process's producer (a later record starts a new one)."""
    with _lock:
        producer = _state.pop("producer", None)
    if producer is not None:
        producer.close(timeout)


class AuditstreamBackend:
    """Receives easyaudit's ``crud``, ``login`` and ``request`` records."""

    def crud(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("crud", info)
        if tenant is None:
            return None
        content_type = ContentType.objects.get_for_id(info["content_type_id"])
        event = mapping.crud_event(
            info,
            tenant=tenant,
            model_label=f"{content_type.app_label}.{content_type.model}",
            actor=_actor(info.get("user_id")),
            context=_request_context(),
            redact=_redact(),
        )
        return get_producer().emit_nowait(event)

    def login(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("login", info)
        if tenant is None:
            return None
        event = mapping.login_event(info, tenant=tenant, context=_request_context())
        return get_producer().emit_nowait(event)

    def request(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("request", info)
        if tenant is None:
            return None
        event = mapping.request_event(
            info, tenant=tenant, actor=_actor(info.get("user_id")), context=_request_context()
        )
        return get_producer().emit_nowait(event)


def _current_request() -> Any:
    from easyaudit.middleware.easyaudit import get_current_request  # type: ignore[import-untyped]

    return get_current_request()


def _tenant(kind: str, info: Mapping[str, Any]) -> str | None:
    options = _options()
    resolver = options.get("TENANT_RESOLVER")
    if resolver:
        fn: Callable[..., str | None] = (
            import_string(resolver) if isinstance(resolver, str) else resolver
        )
        return fn(kind, info, _current_request())
    tenant = options.get("TENANT")
    if not tenant:
        raise ValueError("settings.AUDITSTREAM needs TENANT or TENANT_RESOLVER")
    return str(tenant)


def _redact() -> frozenset[str]:
    return frozenset(_options().get("REDACT_FIELDS", mapping.DEFAULT_REDACT))


def _actor(user_id: Any) -> dict[str, Any] | None:
    if user_id is None:
        return None
    request = _current_request()
    user = getattr(request, "user", None)
    if user is None or getattr(user, "pk", None) != user_id:
        user = get_user_model().objects.filter(pk=user_id).first()
    name = user.get_username() if user is not None else None
    return {"id": str(user_id), "type": "user", "name": name}


def _request_context() -> dict[str, Any]:
    request = _current_request()
    meta = getattr(request, "META", None) or {}
    return {
        "ip": meta.get("REMOTE_ADDR"),
        "user_agent": str(meta.get("HTTP_USER_AGENT") or "")[:1024],
        "request_id": meta.get("HTTP_X_REQUEST_ID"),
    }
