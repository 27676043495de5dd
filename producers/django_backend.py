"""A django-easy-audit logging backend that publishes to auditstream.

In the Django settings (see docs/producers.md)::

    INSTALLED_APPS += ["easyaudit", "auditstream.django"]
    DJANGO_EASY_AUDIT_LOGGING_BACKEND = "auditstream.django.AuditstreamBackend"
    AUDITSTREAM = {
        "TENANT": "acme",                  # or "TENANT_RESOLVER": "myapp.audit.tenant_of"
        "SERVICE": "shop",                 # source.service of every event
        "SPOOL_DIR": "/var/lib/shop/audit-spool",   # default: see default_spool_dir()
        # optional: "BOOTSTRAP", "TOPIC", "IDEMPOTENCE", "OPTIONS": {ProducerConfig kwargs}
    }

(``producers.django_backend.AuditstreamBackend`` is the same class under its old name.)
Unset Kafka options come from the ``AUDITSTREAM_*`` environment (``AuditSettings``).
A tenant resolver is called as ``resolver(kind, info, request)`` with kind ``crud``,
``login`` or ``request`` and returns the tenant (None skips the record).

Promises to the host application:

- **Nothing raises into it.** Every backend method catches and logs whatever goes
  wrong (a missing setting, an unwritable directory, a bug); the request, signal or
  management command carries on as without auditstream.
- **Nothing it handed over is dropped.** The producer is durable: each record is
  committed to this process's spool file before the signal handler returns, and a
  background thread drains the spool into Kafka. Without a Kafka bootstrap the events
  stay spooled until one is configured; without ``SPOOL_DIR`` a per-user default
  directory is used. Only a record that cannot even be turned into an event (no
  tenant configured) is not spooled: it is logged whole at ERROR instead.
- **Misconfiguration is reported by ``manage.py check``** (``auditstream.E001`` …,
  see :func:`check_settings`), not by tracebacks at run time.
- **Several processes are safe**: every process (gunicorn worker, ``manage.py``
  command) writes its own file in the spool directory; files of dead processes are
  drained by live ones (see :mod:`producers.spool`).

easyaudit creates its backend objects at import time without arguments, so the
producer is one lazily started :class:`~producers.SyncAuditProducer` per process
(``auditstream.django``'s ``AppConfig.ready`` starts it at once, so spooled events
drain without waiting for a new record); :func:`close_producer` stops it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.contrib.auth import get_user_model  # type: ignore[import-untyped]
from django.contrib.contenttypes.models import ContentType  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]
from django.core.signals import (  # type: ignore[import-untyped]
    request_finished,
    request_started,
)
from django.db.models.signals import pre_save  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from audit_events.settings import AuditSettings, load_settings
from producers import django_mapping as mapping
from producers.config import ProducerConfig
from producers.spool import SpoolDirectory, default_spool_dir, writable_dir
from producers.sync import SyncAuditProducer

log = logging.getLogger("auditstream.django")

_lock = threading.Lock()
_state: dict[str, Any] = {}
#: After a failed start, wait this long before trying again (each record would else retry).
RETRY_START_AFTER = 30.0


def _options() -> dict[str, Any]:
    raw = getattr(django_settings, "AUDITSTREAM", {}) or {}
    return dict(raw) if isinstance(raw, Mapping) else {}


def _env() -> tuple[AuditSettings | None, str | None]:
    """The ``AUDITSTREAM_*`` settings, or None and the reason they are invalid."""
    try:
        return load_settings(), None
    except Exception as exc:
        return None, str(exc)


def spool_dir(options: Mapping[str, Any]) -> Path:
    """The spool directory: ``SPOOL_DIR``, else ``<SPOOL_PATH without suffix>.d`` (the old
    one-file setting), else :func:`~producers.spool.default_spool_dir` named after the
    settings module."""
    if options.get("SPOOL_DIR"):
        return Path(options["SPOOL_DIR"])
    if options.get("SPOOL_PATH"):
        legacy = Path(options["SPOOL_PATH"])
        return legacy.with_name(legacy.stem + ".d")
    name = os.environ.get("DJANGO_SETTINGS_MODULE") or str(options.get("SERVICE") or "django")
    return default_spool_dir(name)


def producer_config(options: Mapping[str, Any]) -> ProducerConfig:
    """The producer configuration from the ``AUDITSTREAM`` dict and the environment.

    Never raises: what is wrong is logged (and reported by ``manage.py check``) and
    the closest safe configuration is used: no bootstrap → spool only; invalid
    ``OPTIONS`` → ignored; unwritable spool directory → the default one.
    """
    env, env_error = _env()
    if env_error:
        log.error("auditstream: invalid AUDITSTREAM_* environment ignored: %s", env_error)
    overrides: dict[str, Any] = {}
    extra = options.get("OPTIONS") or {}
    known = {f.name for f in dataclass_fields(ProducerConfig)}
    if isinstance(extra, Mapping):
        unknown = sorted(set(extra) - known)
        if unknown:
            log.error("auditstream: unknown AUDITSTREAM['OPTIONS'] ignored: %s", unknown)
        overrides.update({k: v for k, v in extra.items() if k in known})
    bootstrap = options.get("BOOTSTRAP") or (env.kafka_bootstrap if env is not None else None)
    overrides["bootstrap"] = str(bootstrap or "")
    if options.get("TOPIC"):
        overrides["topic"] = options["TOPIC"]
    if "IDEMPOTENCE" in options:
        overrides["idempotence"] = bool(options["IDEMPOTENCE"])
    if options.get("SERVICE"):
        overrides["service"] = str(options["SERVICE"])
    directory = Path(overrides.pop("spool_dir", None) or spool_dir(options))
    if not writable_dir(directory):
        fallback = default_spool_dir(os.environ.get("DJANGO_SETTINGS_MODULE") or "django")
        log.error("auditstream: spool directory %s is not writable; using %s", directory, fallback)
        directory = fallback
    overrides.update(spool_dir=directory, spool_path=None, durable=True)
    if env is not None and env.kafka_bootstrap is not None:
        try:
            return ProducerConfig.from_settings(env, **overrides)
        except Exception as exc:  # e.g. a wrong type in OPTIONS
            log.error("auditstream: invalid producer options ignored: %r", exc)
            return ProducerConfig.from_settings(
                env, bootstrap=overrides["bootstrap"], spool_dir=directory, durable=True
            )
    try:
        return ProducerConfig(**overrides)
    except Exception as exc:
        log.error("auditstream: invalid producer options ignored: %r", exc)
        return ProducerConfig(bootstrap=overrides["bootstrap"], spool_dir=directory, durable=True)


def _adopt_legacy_spool(options: Mapping[str, Any], directory: Path) -> None:
    """Move the old one-file spool (``SPOOL_PATH``) into the directory, to be drained."""
    if not options.get("SPOOL_PATH") or options.get("SPOOL_DIR"):
        return
    legacy = Path(options["SPOOL_PATH"])
    if legacy.is_file():
        with contextlib.suppress(OSError):
            SpoolDirectory(directory, 1, 1).adopt(legacy)


def get_producer() -> SyncAuditProducer | None:
    """The process's producer, started on first use (None if it cannot start)."""
    with _lock:
        producer: SyncAuditProducer | None = _state.get("producer")
        if producer is not None or time.monotonic() < _state.get("retry_at", 0.0):
            return producer
        try:
            options = _options()
            config = producer_config(options)
            assert config.spool_dir is not None
            _adopt_legacy_spool(options, config.spool_dir)
            producer = SyncAuditProducer(config).start(wait_connected=False)
        except Exception:
            log.exception("auditstream: the audit producer could not start; retrying later")
            _state["retry_at"] = time.monotonic() + RETRY_START_AFTER
            return None
        _state["producer"] = producer
        return producer


def start_in_background() -> None:
    """Start the producer now (drains what earlier processes spooled); never raises."""
    try:
        get_producer()
    except Exception:
        log.exception("auditstream: starting the audit producer")


def close_producer(timeout: float = 30.0) -> None:
    """Flush and stop the process's producer (a later record starts a new one)."""
    with _lock:
        producer = _state.pop("producer", None)
        _state.pop("retry_at", None)
    if producer is not None:
        producer.close(timeout)


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _state.clear()  # the child starts its own producer (own spool file) on first use


os.register_at_fork(after_in_child=_forget_after_fork)


def record_event(event: Mapping[str, Any]) -> str | None:
    """Hand one event (a dict as ``emit`` takes) to the process's durable producer: its
    id once it is committed to the spool, or None when it could not be (logged whole at
    ERROR, an invalid event too). Never raises."""
    return _emit(event)


def _emit(event: Mapping[str, Any]) -> str | None:
    producer = get_producer()
    if producer is not None:
        try:
            return producer.emit_nowait(event)
        except Exception:
            log.exception("auditstream: the audit event could not be spooled")
    log.error("auditstream: audit event not recorded: %r", dict(event))
    return None


def _guard(kind: str) -> Callable[[Callable[..., str | None]], Callable[..., str | None]]:
    def wrap(method: Callable[..., str | None]) -> Callable[..., str | None]:
        def guarded(self: AuditstreamBackend, info: dict[str, Any]) -> str | None:
            try:
                return method(self, info)
            except Exception:
                log.exception("auditstream: the %s record was not recorded: %r", kind, info)
                return None

        guarded.__name__ = method.__name__
        guarded.__doc__ = method.__doc__
        return guarded

    return wrap


class AuditstreamBackend:
    """Receives easyaudit's ``crud``, ``login`` and ``request`` records. Never raises."""

    @_guard("crud")
    def crud(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("crud", info)
        if tenant is None:
            return None
        content_type = ContentType.objects.get_for_id(info["content_type_id"])
        label = f"{content_type.app_label}.{content_type.model}"
        event = mapping.crud_event(
            info,
            tenant=tenant,
            model_label=label,
            actor=_actor(info.get("user_id")),
            context=_request_context(),
            redact=_redact(),
        )
        model = content_type.model_class()
        event["changes"] = _foreign_keys(model, event["metadata"]["event"], info, event["changes"])
        return _emit(event)

    @_guard("login")
    def login(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("login", info)
        if tenant is None:
            return None
        user_pk = None
        if info.get("user_id") is None and info.get("username"):
            user_pk = _user_pk(str(info["username"]))
        event = mapping.login_event(
            info, tenant=tenant, context=_request_context(), user_pk=user_pk
        )
        return _emit(event)

    @_guard("request")
    def request(self, info: dict[str, Any]) -> str | None:
        tenant = _tenant("request", info)
        if tenant is None:
            return None
        event = mapping.request_event(
            info, tenant=tenant, actor=_actor(info.get("user_id")), context=_request_context()
        )
        return _emit(event)


# --- the current request ---------------------------------------------------------
# easyaudit's request record is made in a ``request_started`` receiver, before any
# middleware: the request object does not exist yet. This receiver (connected when
# easyaudit imports the backend, so before easyaudit's own) keeps the WSGI environ or
# ASGI scope headers for the request's user agent and request id.

_started: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "auditstream_request_meta", default=None
)


def _remember_request(sender: Any, environ: Any = None, scope: Any = None, **kw: Any) -> None:
    try:
        if environ is not None:
            _started.set(dict(environ))
        elif scope is not None:
            headers = {
                "HTTP_" + k.decode("latin-1").upper().replace("-", "_"): v.decode("latin-1")
                for k, v in scope.get("headers") or []
            }
            client = scope.get("client") or ("", 0)
            _started.set({**headers, "REMOTE_ADDR": client[0]})
    except Exception:
        log.debug("auditstream: request metadata not kept", exc_info=True)


def _forget_request(sender: Any, **kw: Any) -> None:
    _started.set(None)
    _old_fk_values.set(None)


request_started.connect(_remember_request, dispatch_uid="auditstream-request-meta")
request_finished.connect(_forget_request, dispatch_uid="auditstream-request-meta-end")


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
        log.error(
            "auditstream: settings.AUDITSTREAM needs TENANT or TENANT_RESOLVER; "
            "%s record not recorded: %r",
            kind,
            info,
        )
        return None
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


def _user_pk(username: str) -> Any:
    """The pk of the user with this username (a failed login's record carries none)."""
    model = get_user_model()
    user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
    return None if user is None else user.pk


def _fk_fields(model: Any) -> dict[str, Any]:
    """The model's concrete foreign keys and one-to-ones, by field name."""
    if model is None:
        return {}
    return {
        f.name: f
        for f in model._meta.concrete_fields
        if (f.many_to_one or f.one_to_one) and f.related_model is not None
    }


def _foreign_keys(
    model: Any, verb: str, info: Mapping[str, Any], changes: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Foreign keys in ``changes`` as pks, with the related objects' string form beside
    them (``<field>__str``). easyaudit gives pks for a create/delete (the serialised
    object) but the related objects' strings for an update: the pks then come from the
    saved object (new) and from :func:`_remember_old_fks` (old)."""
    fields = {n: f for n, f in _fk_fields(model).items() if n in changes}
    if not fields:
        return changes
    names: dict[str, dict[str, Any]] = {}
    out = dict(changes)
    if verb == "update":
        saved = mapping._serialised_fields(info.get("object_json_repr"))
        old = _pop_old_fks(model, info.get("object_id"))
        for name, field in fields.items():
            names[name] = dict(changes[name])  # easyaudit's str(related object)
            out[name] = {"old": old.get(field.attname), "new": saved.get(name)}
        return mapping.with_related_names(out, names)
    for name, field in fields.items():
        manager = field.related_model._default_manager
        target = field.target_field.attname
        names[name] = {}
        for side, pk in changes[name].items():
            if pk is not None:
                obj = manager.filter(**{target: pk}).first()
                names[name][side] = None if obj is None else str(obj)
    return mapping.with_related_names(out, names)


#: (model, pk) → the foreign-key values an instance had before it was saved.
_old_fk_values: contextvars.ContextVar[dict[tuple[Any, str], dict[str, Any]] | None] = (
    contextvars.ContextVar("auditstream_old_fks", default=None)
)


def _remember_old_fks(sender: Any, instance: Any, raw: bool = False, **kw: Any) -> None:
    """``pre_save``: keep the stored foreign-key pks of an object about to be updated
    (easyaudit's update record only has the related objects' strings)."""
    try:
        if raw or getattr(instance, "pk", None) is None:
            return
        fields = _fk_fields(sender)
        if not fields:
            return
        attnames = [f.attname for f in fields.values()]
        row = sender._default_manager.filter(pk=instance.pk).values(*attnames).first()
        if row is None:
            return
        store = _old_fk_values.get()
        if store is None or len(store) > 1000:
            store = {}
            _old_fk_values.set(store)
        store[(sender, str(instance.pk))] = row
    except Exception:
        log.debug("auditstream: old foreign keys not kept", exc_info=True)


def _pop_old_fks(model: Any, pk: Any) -> dict[str, Any]:
    store = _old_fk_values.get()
    return {} if store is None else store.pop((model, str(pk)), {})


pre_save.connect(_remember_old_fks, dispatch_uid="auditstream-old-foreign-keys")


def _request_context() -> dict[str, Any]:
    request = _current_request()
    meta = getattr(request, "META", None) or _started.get() or {}
    return {
        "ip": meta.get("REMOTE_ADDR"),
        "user_agent": str(meta.get("HTTP_USER_AGENT") or "")[:1024],
        "request_id": meta.get("HTTP_X_REQUEST_ID"),
    }


# --- system checks (``manage.py check``) -----------------------------------------


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """One clear message per missing or wrong setting of the integration."""
    out: list[checks.CheckMessage] = []
    raw = getattr(django_settings, "AUDITSTREAM", {})
    if raw is not None and not isinstance(raw, Mapping):
        out.append(
            checks.Error(
                f"settings.AUDITSTREAM must be a dict, not {type(raw).__name__}.",
                hint='AUDITSTREAM = {"TENANT": "acme", "SERVICE": "shop"}',
                id="auditstream.E002",
            )
        )
        return out
    options = _options()
    env, env_error = _env()
    if env_error:
        out.append(
            checks.Error(
                f"Invalid AUDITSTREAM_* environment: {env_error}",
                id="auditstream.E005",
            )
        )
    elif not options.get("BOOTSTRAP") and (env is None or not env.kafka_bootstrap):
        out.append(
            checks.Error(
                "No Kafka bootstrap for audit events: AUDITSTREAM_KAFKA_BOOTSTRAP is not set "
                "and settings.AUDITSTREAM has no BOOTSTRAP. Audit events are only spooled "
                f"(in {spool_dir(options)}) until one is set.",
                hint="Set AUDITSTREAM_KAFKA_BOOTSTRAP=host:9092 in the environment, or "
                'AUDITSTREAM["BOOTSTRAP"].',
                id="auditstream.E001",
            )
        )
    resolver = options.get("TENANT_RESOLVER")
    if resolver:
        if isinstance(resolver, str):
            try:
                resolver = import_string(resolver)
            except ImportError as exc:
                out.append(
                    checks.Error(
                        f'AUDITSTREAM["TENANT_RESOLVER"] cannot be imported: {exc}',
                        id="auditstream.E003",
                    )
                )
                resolver = None
        if resolver is not None and not callable(resolver):
            out.append(
                checks.Error(
                    'AUDITSTREAM["TENANT_RESOLVER"] is not callable.', id="auditstream.E003"
                )
            )
    elif not options.get("TENANT"):
        out.append(
            checks.Error(
                'settings.AUDITSTREAM needs "TENANT" (one tenant for every event) or '
                '"TENANT_RESOLVER" (a dotted path to resolver(kind, info, request)).',
                id="auditstream.E003",
            )
        )
    configured = options.get("SPOOL_DIR") or options.get("SPOOL_PATH")
    if configured and not writable_dir(spool_dir(options)):
        out.append(
            checks.Error(
                f"The audit spool directory {spool_dir(options)} cannot be created or written.",
                hint="Point AUDITSTREAM['SPOOL_DIR'] at a writable local directory.",
                id="auditstream.E004",
            )
        )
    extra = options.get("OPTIONS") or {}
    known = {f.name for f in dataclass_fields(ProducerConfig)}
    if not isinstance(extra, Mapping):
        out.append(checks.Error('AUDITSTREAM["OPTIONS"] must be a dict.', id="auditstream.E006"))
    elif set(extra) - known:
        out.append(
            checks.Error(
                f'Unknown AUDITSTREAM["OPTIONS"]: {", ".join(sorted(set(extra) - known))}.',
                hint="They are ProducerConfig fields (docs/producers.md).",
                id="auditstream.E006",
            )
        )
    if options.get("SPOOL_PATH") and not options.get("SPOOL_DIR"):
        out.append(
            checks.Warning(
                'AUDITSTREAM["SPOOL_PATH"] (one file for every process) is replaced by '
                f'"SPOOL_DIR" (one file per process); events are spooled in {spool_dir(options)} '
                "and the old file is drained from there.",
                id="auditstream.W001",
            )
        )
    return out


checks.register(check_settings, "auditstream")
