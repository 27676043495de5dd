"""``/v1/targets/{type}/{id}/history``: one object's timeline, and its state ``?as_of=``.

The timeline is every event of the tenant whose ``targets`` include the object,
oldest first by default, keyset-paginated like ``/v1/events``; each event carries
its field diff (``changes``). ``?as_of=T`` folds those diffs, oldest first, into
the object's known field values at ``T`` (django-simple-history's ``as_of``).

Reads are cached under the tenant+target generation, which the processor bumps
after every stored batch that touches the object: other objects' writes leave
this object's cached history alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, current_app, g, request
from quart_schema import document_querystring, document_response
from werkzeug.datastructures import MultiDict

from audit_events.cache_keys import target_generation
from audit_events.codec import document_to_api
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import (
    encode_cursor,
    mongo_filter,
    parse_list_query,
    parse_time,
    single_values,
    sort_spec,
)
from query_api.services import Services

bp = Blueprint("history", __name__)

# Filters that make sense within one object's timeline (the target is the path).
HISTORY_PARAMS = (
    "actor",
    "actor_type",
    "action",
    "outcome",
    "crud",
    "source",
    "since",
    "until",
    "q",
    "order",
    "limit",
    "cursor",
    "tenant",
    "as_of",
)
FOLD_BATCH = 500


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KnownValue:
    """A field's value at ``as_of`` and the event it is known from."""

    value: Any
    event_id: str
    occurred_at: datetime
    inferred: bool  # True: the ``old`` side of the first change after ``as_of``

    def to_api(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "event_id": self.event_id,
            "occurred_at": _iso(self.occurred_at),
            "inferred": self.inferred,
        }


@dataclass
class AsOfFolder:
    """Folds one object's events, fed oldest first, into its field values at ``as_of``.

    Rules (what a reader of an audit log would expect):

    - only successful events change state: a ``denied`` or ``failure`` update did
      not happen, so its ``changes`` are ignored (counted in ``events_skipped``);
    - for events at or before ``as_of`` a field takes the ``new`` side of its last
      change; a creation (``crud`` ``c``) forgets what came before it;
    - a field never changed by ``as_of`` but changed later had, at ``as_of``, the
      ``old`` side of its first later change (marked ``inferred``) — unless the
      object was deleted at ``as_of`` or (re)created after it (``crud`` ``c``),
      when earlier values say nothing about it;
    - ``deleted`` is true when the last successful event at or before ``as_of``
      with a ``crud`` of ``c`` or ``d`` was a ``d``.

    ``add`` raises :class:`ValueError` when events arrive out of order.
    """

    as_of: datetime
    fields: dict[str, KnownValue] = field(default_factory=dict)
    later: dict[str, KnownValue] = field(default_factory=dict)
    events_applied: int = 0
    events_skipped: int = 0
    last_event_id: str | None = None
    deleted: bool = False
    _recreated_after: bool = False
    _last_key: tuple[datetime, str] | None = None

    def add(self, event: dict[str, Any]) -> None:
        """Fold one stored document or API event (both carry the client id in ``id``)."""
        when: datetime = event["occurred_at"]
        event_id: str = event["id"] if "id" in event else event["_id"]  # old layout: _id
        key = (when, event_id)
        if self._last_key is not None and key < self._last_key:
            raise ValueError(f"event {event_id} is older than the previous one")
        self._last_key = key
        if event.get("outcome", "success") != "success":
            if when <= self.as_of:
                self.events_skipped += 1
            return
        changes: dict[str, dict[str, Any]] = event.get("changes") or {}
        crud = event.get("crud")
        if when <= self.as_of:
            self.events_applied += 1
            self.last_event_id = event_id
            if crud == "c":  # a (re)creation starts from a clean slate
                self.fields.clear()
            for name, change in changes.items():
                self.fields[name] = KnownValue(change.get("new"), event_id, when, False)
            if crud in ("c", "d"):
                self.deleted = crud == "d"
            return
        if self.deleted or self._recreated_after:
            return
        if crud == "c":
            self._recreated_after = True
            return
        for name, change in changes.items():
            if name not in self.fields and name not in self.later:
                self.later[name] = KnownValue(change.get("old"), event_id, when, True)

    def known(self) -> dict[str, KnownValue]:
        """Every field whose value at ``as_of`` is known, sorted by name."""
        merged = {**self.later, **self.fields}
        return {name: merged[name] for name in sorted(merged)}

    def result(self, target_type: str, target_id: str) -> dict[str, Any]:
        known = self.known()
        return {
            "target": {"type": target_type, "id": target_id},
            "as_of": _iso(self.as_of),
            "state": {name: v.value for name, v in known.items()},
            "fields": {name: v.to_api() for name, v in known.items()},
            "events_applied": self.events_applied,
            "events_skipped": self.events_skipped,
            "last_event_id": self.last_event_id,
            "deleted": self.deleted,
        }


def fold_as_of(
    events: list[dict[str, Any]], as_of: datetime, target_type: str, target_id: str
) -> dict[str, Any]:
    """The object's state at ``as_of`` from its events (any order; sorted here)."""
    folder = AsOfFolder(as_of)
    for event in sorted(events, key=lambda e: (e["occurred_at"], e.get("id", e.get("_id")))):
        folder.add(event)
    return folder.result(target_type, target_id)


class HistoryArgs(BaseModel):
    order: str | None = Field(None, description="asc (default, oldest first) or desc")
    limit: int | None = Field(None, description="1..1000, default 100")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    as_of: str | None = Field(
        None, description="RFC 3339: answer the object's field values at that time instead"
    )
    action: str | None = None
    actor: str | None = None
    actor_type: str | None = None
    outcome: str | None = None
    crud: str | None = None
    source: str | None = None
    since: str | None = None
    until: str | None = None
    q: str | None = None
    tenant: str | None = Field(None, description="Required for multi-tenant tokens")


class HistoryPage(BaseModel):
    target: dict[str, str]
    data: list[dict[str, Any]]
    next_cursor: str | None


def _services() -> Services:
    services: Services = current_app.config["AUDITSTREAM_SERVICES"]
    return services


@bp.get("/v1/targets/<target_type>/<target_id>/history")
@document_querystring(HistoryArgs)
@document_response(HistoryPage)
@require_scope("events:read")
async def target_history(target_type: str, target_id: str) -> Response:
    """One object's timeline with field diffs; ``?as_of=`` answers its state at a time."""
    values = single_values(request.args, HISTORY_PARAMS)
    tenant = read_tenant(g.principal, values.get("tenant"))
    as_of = parse_time("as_of", values.pop("as_of")) if "as_of" in values else None
    values.setdefault("order", "asc")
    query = parse_list_query(
        MultiDict({**values, "target_type": target_type, "target_id": target_id})
    )
    target = {"type": target_type, "id": target_id}
    services = _services()
    events = services.events

    async def load_page() -> bytes:
        cursor = events.find(mongo_filter(tenant, query)).sort(sort_spec(query.order))
        docs = await cursor.limit(query.limit + 1).to_list()
        page = docs[: query.limit]
        nxt = None
        if len(docs) > query.limit:
            nxt = encode_cursor(page[-1]["occurred_at"], page[-1]["_id"])
        body = {"target": target, "data": [document_to_api(d) for d in page], "next_cursor": nxt}
        return orjson.dumps(body)

    async def load_state() -> bytes:
        assert as_of is not None
        # The whole timeline, oldest first, only what folding needs, in batches.
        scan = parse_list_query(MultiDict({"target_type": target_type, "target_id": target_id}))
        projection = {"id": 1, "occurred_at": 1, "changes": 1, "crud": 1, "outcome": 1}
        cursor = events.find(mongo_filter(tenant, scan), projection).sort(sort_spec("asc"))
        folder = AsOfFolder(as_of)
        async for doc in cursor.batch_size(FOLD_BATCH):
            folder.add(doc)
        return orjson.dumps(folder.result(target_type, target_id))

    if as_of is not None:
        extra = set(values) - {"tenant", "order"}
        if extra:
            raise Problem(400, f"as_of cannot be combined with {', '.join(sorted(extra))}")
        kind, normalized, loader = "asof", f"{_iso(as_of)}", load_state
    else:
        kind, normalized, loader = "history", query.normalized(), load_page
    body, state = await services.cache.get_or_load(
        kind,
        tenant,
        [target_generation(tenant, target_type, target_id)],
        f"{target_type}\x00{target_id}\x00{normalized}",
        loader,
    )
    resp = Response(body, content_type="application/json")
    resp.headers["X-Cache"] = state
    return resp
