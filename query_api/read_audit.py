"""Auditing of reads: who read the audit log, through the API and the viewer.

Every successful read of the log — a page of ``GET /v1/events``, one event
(``GET /v1/events/{id}``), an object's history, an export, a chain
verification — publishes one event into the same pipeline:

- ``action``: ``auditstream.log.viewed`` (list, get, history),
  ``auditstream.log.exported`` (export), ``auditstream.log.verified`` (verify);
- ``actor.id``: the token's subject; ``tenant``: the tenant read;
- ``metadata.read``: ``{kind, filters, count}`` (``count``: the events the answer
  held; an export's when its stream ended, with ``complete: false`` if the
  client went away first) plus the page / event id / object read;
- ``context``: the request id, client address and user agent.

The events are in the reserved ``auditstream.`` namespace and carry the API's
control-event proof (``metadata.proof``, :func:`audit_events.chain.sign_control`
with ``AUDITSTREAM_CONTROL_SIGNING_KEY``): the processor stores them like any
event and dead-letters one a producer forged (``POST /v1/events`` refuses the
namespace anyway).

No loop. A read does not emit when all it can return are read-audit events: a
list or export whose ``action`` filter lies in ``auditstream.log.`` (exact, or a
prefix such as ``auditstream.log.*``), a get of a read-audit event. Read-audit
events have no ``targets``, so no object's history holds them. Every other read
emits exactly one event, however many read-audit events it returned.

Off the request path. :meth:`ReadAuditor.record` only appends a small record
to a bounded queue; one background task builds, signs and publishes the queued
events in batches through the API's Kafka publisher. A record is never dropped
silently: whatever is not acknowledged (broker down after a retry, a full
queue, no signing key, shutdown timeout) counts in
``auditstream_read_audit_failures_total{reason}`` and is logged with its tenant,
actor and action. ``AUDITSTREAM_READ_AUDIT=false`` turns it all off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import Counter
from pydantic import ValidationError
from quart import Quart, current_app, g, request

from audit_events.cache_keys import READ_AUDIT_PREFIX, read_audit_generation
from audit_events.chain import (
    EXPORTED_ACTION,
    READ_ACTION_PREFIX,
    VERIFIED_ACTION,
    VIEWED_ACTION,
    load_private_key,
    sign_control,
)
from audit_events.codec import canonical_json, event_wire_dict
from audit_events.ids import uuid7
from audit_events.schema import AuditEvent, limits_from
from audit_events.settings import AuditSettings
from audit_events.topics import partition_key
from query_api.auth import Principal
from query_api.cache import ReadCache
from query_api.publisher import PublishFailed
from query_api.state import api_state

log = logging.getLogger("auditstream.api.read_audit")

Kind = Literal["list", "get", "history", "export", "verify"]
ACTIONS: dict[str, str] = {
    "list": VIEWED_ACTION,
    "get": VIEWED_ACTION,
    "history": VIEWED_ACTION,
    "export": EXPORTED_ACTION,
    "verify": VERIFIED_ACTION,
}
assert READ_AUDIT_PREFIX == READ_ACTION_PREFIX  # the cache's split follows the actions
SOURCE = {"service": "auditstream-api", "component": "read-audit"}
EXTENSION = "auditstream.read_audit"
MAX_PENDING = 10_000  # records waiting to be published; beyond: counted as lost
MAX_BATCH = 500
RETRY_SECONDS = 1.0
DRAIN_SECONDS = 5.0
LINGER_SECONDS = 0.2  # off the request path: an event waits this long to share a batch
UNSIGNED_LOG_SECONDS = 60.0
NAME_MAX = 256
COUNTED_BODIES = 32  # answers whose event count is kept (count_in)
YIELD_SECONDS = 0.001  # signing a batch lets requests run this often (not after every event)


def selects_only_read_events(filters: Mapping[str, str]) -> bool:
    """True when the ``action`` filter matches read-audit events only (the loop rule)."""
    action = filters.get("action")
    if not action:
        return False
    if action.endswith(".*"):
        return action[:-1].startswith(READ_ACTION_PREFIX)
    return action.startswith(READ_ACTION_PREFIX)


def is_read_event(action: object) -> bool:
    return isinstance(action, str) and action.startswith(READ_ACTION_PREFIX)


def read_events_scope(cache: ReadCache, tenant: str, filters: Mapping[str, str]) -> list[str]:
    """The extra generation key of a list of read-audit events only (else none).

    The processor bumps read-audit events' own generation, not the tenant's
    (audit_events/cache_keys.py): a list of them is keyed on it, so it is fresh;
    other lists show new read-audit events after the tenant's next other write
    or the cache TTL, and a read never turns the next one into a miss.
    """
    if not selects_only_read_events(filters):
        return []
    return [read_audit_generation(cache.namespace, tenant)]


@dataclass(frozen=True)
class ReadRecord:
    """What one read was, captured on the request path (cheap: no validation)."""

    kind: Kind
    tenant: str
    subject: str
    filters: dict[str, str]
    count: int
    detail: dict[str, Any] = field(default_factory=dict)  # page, event_id, target, ...
    context: dict[str, str] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The answer's JSON when ``count`` is still to be taken from it (off the request path).
    body: bytes | None = None


@functools.lru_cache(maxsize=COUNTED_BODIES)
def count_in(body: bytes) -> int:
    """The events a cached JSON answer holds: its ``data`` page, or an ``as_of``
    state's ``events_applied``.

    Kept for the last :data:`COUNTED_BODIES` answers, by their bytes: every hit
    of a hot cached page is the same bytes, hashed (~15 µs for 78 KB) instead of
    parsed again (~300 µs; issue 18).
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    if isinstance(parsed, dict):
        if isinstance(parsed.get("data"), list):
            return len(parsed["data"])
        applied = parsed.get("events_applied")
        if isinstance(applied, int):
            return applied
    return 0


def resolved(record: ReadRecord) -> ReadRecord:
    """``record`` with its count taken from its body, if it has one."""
    if record.body is None:
        return record
    return replace(record, count=count_in(record.body), body=None)


def build_event(record: ReadRecord) -> dict[str, Any]:
    """The unsigned read-audit event of ``record`` (its wire fields)."""
    record = resolved(record)
    action = ACTIONS[record.kind]
    count = record.count
    noun = "event" if count == 1 else "events"
    return {
        "id": uuid7(),
        "tenant": record.tenant,
        "action": action,
        "crud": "r",
        "occurred_at": record.at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": {"id": record.subject[:NAME_MAX] or "unknown", "type": "api_client"},
        "outcome": "success",
        "description": f"{record.kind} of the audit log: {count} {noun}",
        "source": dict(SOURCE),
        **({"context": dict(record.context)} if record.context else {}),
        "metadata": {
            "read": {
                "kind": record.kind,
                "filters": dict(record.filters),
                "count": count,
                **record.detail,
            }
        },
    }


def signed_event(record: ReadRecord, key: Ed25519PrivateKey, settings: AuditSettings) -> bytes:
    """``record``'s event with the API's proof, as published (canonical JSON).

    Validated once with the processor's limits; the proof adds only
    ``metadata.proof``, so the signed form needs no second validation. Raises
    ``ValueError`` when the event would be invalid.
    """
    limits = limits_from(settings)
    try:
        unsigned = AuditEvent.model_validate(build_event(record), context={"limits": limits})
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"]) from None
    return canonical_json(sign_control(key, event_wire_dict(unsigned), wire=True))


def request_context() -> dict[str, str]:
    """The request id, client address and user agent of the current request."""
    out: dict[str, str] = {}
    request_id = g.get("request_id")
    if request_id:
        out["request_id"] = str(request_id)[:NAME_MAX]
    if request.remote_addr:
        out["ip"] = request.remote_addr[:64]
    agents = request.headers.getlist("User-Agent")  # no KeyError raised inside when absent
    if agents and agents[0]:
        out["user_agent"] = agents[0][:1024]
    return out


class ReadAuditor:
    """The fire-and-forget emitter: a bounded queue and one publishing task."""

    def __init__(self, app: Quart, settings: AuditSettings) -> None:
        self._app = app
        self._settings = settings
        self.enabled = settings.read_audit
        self._key: Ed25519PrivateKey | None = None
        if settings.control_signing_key is not None:
            self._key = load_private_key(settings.control_signing_key.get_secret_value())
        registry = api_state(app).metrics.registry
        self.failures = Counter(
            "auditstream_read_audit_failures",
            "Read-audit events that were not published, by reason",
            ["reason"],
            registry=registry,
        )
        self.published = Counter(
            "auditstream_read_audit_published",
            "Read-audit events published to the events topic",
            registry=registry,
        )
        self._queue: deque[ReadRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._unsigned, self._unsigned_logged = 0, -UNSIGNED_LOG_SECONDS

    # -- request path ---------------------------------------------------------

    def record(self, record: ReadRecord) -> None:
        """Queue ``record`` for publication; never blocks, never raises."""
        if not self.enabled:
            return
        if len(self._queue) >= MAX_PENDING:
            self._lost([record], "backlog")
            return
        self._queue.append(record)
        self._wake.set()

    # -- background -----------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._key is None:
            log.warning(
                "read auditing is on but AUDITSTREAM_CONTROL_SIGNING_KEY is not set:"
                " reads cannot be recorded (counted as auditstream_read_audit_failures"
                '{reason="unsigned"}); set the key or AUDITSTREAM_READ_AUDIT=false'
            )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, timeout: float = DRAIN_SECONDS) -> None:
        """Publish what is queued (within ``timeout``), then stop; the rest is counted."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._queue:
            self._lost(list(self._queue), "shutdown")
            self._queue.clear()

    def pending(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and len(self._queue) < MAX_BATCH:
                await asyncio.sleep(LINGER_SECONDS)  # fewer, larger produce requests
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                self._lost(batch, "shutdown")
                raise
            except Exception:  # never let the emitter die: count, log, go on
                log.exception("read audit: unexpected error")
                self._lost(batch, "error")

    async def _publish(self, batch: list[ReadRecord]) -> None:
        if self._key is None:
            self._lost(batch, "unsigned")
            return
        messages: list[tuple[bytes, bytes]] = []
        paused = time.perf_counter()
        for record in batch:
            try:
                raw = signed_event(resolved(record), self._key, self._settings)
            except ValueError as exc:
                self._lost([record], "invalid", str(exc))
                continue
            messages.append((partition_key(record.tenant), raw))
            if (now := time.perf_counter()) >= paused + YIELD_SECONDS:
                await asyncio.sleep(0)  # let waiting requests run
                paused = now
        if not messages:
            return
        publisher = api_state(self._app).publisher
        for attempt in (1, 2):
            if publisher is None:
                break
            try:
                await publisher.publish(messages)
            except PublishFailed as exc:
                log.warning("read audit: publish attempt %d failed: %s", attempt, exc)
                if attempt == 1 and not self._closing:
                    await asyncio.sleep(RETRY_SECONDS)
                continue
            self.published.inc(len(messages))
            return
        self._lost(batch, "publish", "the events topic did not acknowledge")

    def _lost(self, records: list[ReadRecord], reason: str, why: str = "") -> None:
        self.failures.labels(reason).inc(len(records))
        if reason == "unsigned":  # a setting, not an incident: warned at start, then per minute
            self._unsigned += len(records)
            now = time.monotonic()
            if now - self._unsigned_logged >= UNSIGNED_LOG_SECONDS:
                log.error(
                    "%d reads not recorded: no AUDITSTREAM_CONTROL_SIGNING_KEY", self._unsigned
                )
                self._unsigned, self._unsigned_logged = 0, now
            return
        for record in records:
            log.error(
                "read audit event lost (%s%s): tenant=%s actor=%s action=%s count=%d at=%s",
                reason,
                f": {why}" if why else "",
                record.tenant,
                record.subject,
                ACTIONS[record.kind],
                resolved(record).count,
                record.at.isoformat(),
            )


def install(app: Quart) -> ReadAuditor:
    """Create the app's auditor; its task runs while the app serves."""
    auditor = ReadAuditor(app, api_state(app).settings)
    app.extensions[EXTENSION] = auditor

    @app.while_serving
    async def run_auditor() -> AsyncGenerator[None, None]:
        auditor.start()
        yield
        await auditor.stop()  # before after_serving stops the publisher

    return auditor


def auditor(app: Quart | None = None) -> ReadAuditor | None:
    found: ReadAuditor | None = (app or current_app).extensions.get(EXTENSION)
    return found


def audit_read(
    kind: Kind,
    tenant: str,
    filters: Mapping[str, str],
    count: int = 0,
    *,
    body: bytes | None = None,
    **detail: Any,
) -> None:
    """Record one read of the current request (called by the blueprints).

    ``body``: the JSON answer, whose events are counted later, off the request
    path (``count`` is then ignored). Skipped (the loop rule) when ``filters``
    select read-audit events only.
    """
    found = auditor()
    if found is None or not found.enabled or selects_only_read_events(filters):
        return
    principal: Principal = g.principal
    found.record(
        ReadRecord(
            kind,
            tenant,
            principal.subject,
            dict(filters),
            count,
            {k: v for k, v in detail.items() if v is not None},
            request_context(),
            body=body,
        )
    )


def audited_export(
    docs: AsyncIterator[dict[str, Any]],
    tenant: str,
    filters: Mapping[str, str],
    **detail: Any,
) -> AsyncIterator[dict[str, Any]]:
    """``docs`` (an export's store cursor), recorded as one read when it ends.

    The count is of the events the stream handed out; ``complete`` is false when
    the client went away (or the store failed) before the end. Who and from
    where are taken now, on the request path: the body streams after it.
    """
    found = auditor()
    if found is None or not found.enabled or selects_only_read_events(filters):
        return docs
    principal: Principal = g.principal
    context = request_context()
    kept = {k: v for k, v in detail.items() if v is not None}

    async def counted() -> AsyncIterator[dict[str, Any]]:
        count, complete = 0, False
        try:
            async for doc in docs:
                count += 1
                yield doc
            complete = True
        finally:
            close = getattr(docs, "aclose", None)
            try:
                if close is not None:
                    await close()
            finally:
                found.record(
                    ReadRecord(
                        "export",
                        tenant,
                        principal.subject,
                        dict(filters),
                        count,
                        {**kept, "complete": complete},
                        context,
                    )
                )

    return counted()
