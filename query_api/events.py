"""``/v1/events``: ingestion (publish to Kafka) and cached, tenant-scoped reads."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Blueprint, Response, current_app, g, request
from quart_schema import document_querystring, document_request, document_response

from audit_events.chain import RESERVED_ACTION_PREFIX
from audit_events.codec import canonical_json, content_hash, document_to_api, encode_event
from audit_events.masking import Masker, MaskingRule, mask_event
from audit_events.notify import WAIT_HEADER
from audit_events.schema import AuditEvent, limits_from, parse_json
from audit_events.settings import AuditSettings
from audit_events.topics import partition_key
from query_api.auth import Principal, read_tenant, require_scope
from query_api.problems import Problem
from query_api.publisher import PublishFailed
from query_api.query import EventFilters, ListQuery, page_body, parse_list_query, single_values
from query_api.read_audit import audit_read, is_read_event, read_events_scope
from query_api.retention import purged_problem
from query_api.state import current_cache, current_publisher, current_settings, current_store
from query_api.store import Masked, StoreUnavailable
from query_api.stored_waits import Expectation

bp = Blueprint("events", __name__)
WAIT_SECONDS = 5.0
WAITED = [(WAIT_HEADER, b"1")]  # the Kafka header of a ?wait=true request's events


class EventBatch(BaseModel):
    events: list[AuditEvent]


class Accepted(BaseModel):
    ids: list[str]
    status: str = Field(description="'accepted' (published) or 'stored' (with ?wait=true)")


class StoredEvent(BaseModel):
    """An event as stored: the schema's fields plus received_at, seq and hashes."""

    model_config = ConfigDict(extra="allow")
    id: str
    tenant: str
    action: str
    occurred_at: str


class EventPage(BaseModel):
    data: list[StoredEvent]
    next_cursor: str | None


class ListFilters(EventFilters):
    order: str | None = Field(None, description="desc (default, newest first) or asc")
    limit: int | None = Field(None, description="1..1000, default 100")
    cursor: str | None = None
    include_erased: str | None = Field(
        None, description="true: erased events stay in the list as tombstones"
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    resp = Response(raw, status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _parse_events(raw: bytes, settings: AuditSettings) -> list[AuditEvent]:
    # The processor's parser and validator with the processor's limits: whatever
    # is answered 202 here is stored there (integers beyond 64 bits stay exact
    # and are refused, where orjson would have made them lossy floats).
    try:
        body = parse_json(raw)
    except ValueError as exc:
        if "recursion limit" in str(exc):  # valid JSON, nested past every depth limit
            raise Problem(422, f"body is nested too deeply: {exc}") from None
        raise Problem(400, f"body is not valid JSON: {exc}") from None
    items: Any
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if extra := sorted(body.keys() - {"events"}):  # an event's unknown fields are 422 too
            unknown = [
                {"loc": [k[:100]], "msg": "Extra inputs are not permitted"} for k in extra[:5]
            ]
            raise Problem(422, 'a batch is {"events": [...]} only', errors=unknown)
        if not isinstance(items, list):
            raise Problem(422, "'events' must be a list", errors=[{"loc": ["events"]}])
        if len(items) > settings.max_batch_events:
            raise Problem(413, f"at most {settings.max_batch_events} events per request")
    elif isinstance(body, dict):
        items = [body]
    else:
        raise Problem(422, 'body must be an event object or {"events": [...]}')
    if not items:
        raise Problem(422, "no events given")
    limits = limits_from(settings)
    events: list[AuditEvent] = []
    errors: list[dict[str, Any]] = []
    # (tenant, id) -> (index, the item's canonical JSON, its event): the worker stores
    # the first event of a (tenant, id) and dead-letters another content under it
    seen: dict[tuple[str, str], tuple[int, bytes, AuditEvent]] = {}
    for index, item in enumerate(items):
        prefix = ["events", index] if len(items) > 1 or "events" in body else []
        try:
            event = AuditEvent.model_validate(item, context={"limits": limits})
        except ValidationError as exc:
            errors += [
                {"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            continue
        key, raw_item = (event.tenant, event.id), canonical_json(item)
        if key not in seen:
            seen[key] = (index, raw_item, event)
        elif raw_item == seen[key][1]:
            event = seen[key][2]  # the same event again: the same defaults (occurred_at)
        elif encode_event(event) != encode_event(seen[key][2]):
            msg = f"id {event.id!r} of tenant {event.tenant} is events[{seen[key][0]}] too"
            msg += ", with other content (an event id is its idempotency key)"
            errors.append({"loc": [*prefix, "id"], "msg": msg, "type": "duplicate_id"})
        events.append(event)
    if errors:
        raise Problem(422, "event validation failed", errors=errors)
    return events


@bp.post("/v1/events")
@document_request(EventBatch)
@document_response(Accepted, 202)
@require_scope("events:write")
async def create_events() -> Response:
    """Publish one event or a batch: 202 once Kafka acknowledged, 201 (?wait=true) once stored."""
    settings = current_settings()
    args = single_values(request.args, ("wait",))
    wait = args.get("wait", "false").lower() in ("1", "true", "yes")
    principal: Principal = g.principal
    raw: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
    events = _parse_events(raw, settings)
    for event in events:
        if event.action.startswith(RESERVED_ACTION_PREFIX):  # control events: admin API only
            raise Problem(422, f"actions starting with {RESERVED_ACTION_PREFIX!r} are reserved")
        if not principal.may_access(event.tenant):
            raise Problem(403, f"token does not grant tenant {event.tenant}")
        if len(encode_event(event)) > settings.max_event_bytes:
            raise Problem(413, f"event {event.id} exceeds {settings.max_event_bytes} bytes")
    messages = [(partition_key(e.tenant), encode_event(e)) for e in events]
    wanted = {(e.tenant, e.id): content_hash(e) for e in events} if wait else {}
    # Registered before the publish: the processor's announcement of these events
    # cannot come before it (query_api/stored_waits.py).
    registered = current_store().expect_stored(wanted) if wait else contextlib.nullcontext()
    with registered as expected:
        try:  # a waited event's header shortens the worker's fetch wait (Tansu)
            await current_publisher().publish(messages, headers=WAITED if wait else None)
        except PublishFailed as exc:
            raise Problem(
                503,
                f"event log unavailable, nothing to lose: retry the request ({exc})",
                headers={"Retry-After": "5"},
            ) from None
        ids = [e.id for e in events]
        if wait and await _wait_confirmed(events, wanted, expected):
            return _json({"ids": ids, "status": "stored"}, 201)
    headers = {"Location": f"/v1/events/{ids[0]}"} if wait else None
    return _json({"ids": ids, "status": "accepted"}, 202, headers)


async def _wait_confirmed(
    events: list[AuditEvent], wanted: dict[tuple[str, str], str], expected: Expectation | None
) -> bool:
    """True once every event is stored, within ``WAIT_SECONDS``; False otherwise.

    Confirmed by the processor's announcement naming every (tenant, id) with its
    content hash, else looked up by (tenant, id) and compared by content hash
    (``EventStore.wait_stored``). The events are in Kafka already: an
    unconfirmable wait answers 202, not 5xx.
    """
    store = current_store()

    async def masked() -> dict[tuple[str, str], Masked]:
        # Only when a stored hash differs from the sent one: a tenant with masking rules
        found: dict[tuple[str, str], Masked] = {}
        for tenant in {e.tenant for e in events}:
            rules = await store.masking_rules(tenant)
            if rules:  # stored masked: compare with every path it ever masked redacted
                redact = Masker([MaskingRule(path=r.path, action="redact") for r in rules], None)
                for e in events:
                    if e.tenant == tenant:
                        found[(e.tenant, e.id)] = (redact, content_hash(mask_event(e, redact)))
        return found

    try:
        return await store.wait_stored(wanted, WAIT_SECONDS, masked, expected=expected)
    except StoreUnavailable as exc:
        current_app.logger.warning("?wait=true could not confirm storage: %s", exc)
        return False


@dataclass(frozen=True)
class ListRead:
    """What a ``GET /v1/events`` query string asks for, parsed and checked."""

    query: ListQuery
    include_erased: bool
    tenant: str | None  # ?tenant=
    key: str  # the cache key's query part
    page: dict[str, Any]  # the read audit's page


# Query strings seen, parsed (issue 18: a cached hit repeats its query string; the
# parse is a function of the string alone). Refused strings are not kept.
_LIST_READS: dict[bytes, ListRead] = {}
LIST_READS_MAX = 1024


def list_read(query_string: bytes) -> ListRead:
    """The list request of the current request, whose query string is ``query_string``."""
    found = _LIST_READS.get(query_string)
    if found is not None:
        return found
    args = request.args
    query = parse_list_query(args, extra_allowed=("include_erased",))
    include_erased = args.get("include_erased", "false")
    if include_erased not in ("true", "false"):
        raise Problem(400, "include_erased must be true or false")
    erased = include_erased == "true"
    key = query.normalized() + ("|erased" if erased else "")
    page = {"limit": query.limit, "order": query.order, "cursor": query.cursor is not None}
    found = ListRead(query, erased, args.get("tenant"), key, page)
    if len(_LIST_READS) >= LIST_READS_MAX:
        _LIST_READS.clear()
    _LIST_READS[query_string] = found
    return found


@bp.get("/v1/events")
@document_querystring(ListFilters)
@document_response(EventPage)
@require_scope("events:read")
async def list_events() -> Response:
    """List the tenant's events, newest first, with keyset cursor pagination.

    ``include_erased=true`` keeps erased events in place as tombstones (``erased``:
    who, when, why; no payload), as the viewer shows them.
    """
    read = list_read(request.query_string)
    query, erased = read.query, read.include_erased
    tenant = read_tenant(g.principal, read.tenant)
    store, cache = current_store(), current_cache()

    async def load() -> bytes:
        docs = await store.list_page(tenant, query, erased)
        return orjson.dumps(page_body(docs, query.limit))

    scope = cache.tenant_scope(tenant) + read_events_scope(cache, tenant, query.filters)
    body, state = await cache.get_or_load("list", tenant, scope, read.key, load)
    page = dict(read.page)
    audit_read("list", tenant, query.filters, body=body, page=page, include_erased=erased)
    return _json(body, headers={"X-Cache": state})


@bp.get("/v1/events/<event_id>")
@document_response(StoredEvent)
@require_scope("events:read")
async def get_event(event_id: str) -> Response:
    """One event of the token's tenant; 404 alike for unknown and other tenants' ids."""
    single_values(request.args, ("tenant",))
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    store, cache = current_store(), current_cache()

    async def load() -> bytes:
        doc = await store.get(tenant, event_id)
        return b"" if doc is None else orjson.dumps(document_to_api(doc))

    body, state = await cache.get_or_load("get", tenant, cache.tenant_scope(tenant), event_id, load)
    if not body:
        purged = await purged_problem(tenant, event_id)  # issue 16: 410, where it is archived
        raise purged or Problem(404, f"no event {event_id!r}")
    view = orjson.loads(body)
    erased = view.get("erased")
    if erased:  # kept in the chain, payload gone (docs/chain.md)
        raise Problem(410, f"event {event_id!r} was erased", erased=erased)
    if not is_read_event(view.get("action")):  # no loop: reading a read record is not audited
        audit_read("get", tenant, {}, 1, event_id=event_id)
    return _json(body, headers={"X-Cache": state})
