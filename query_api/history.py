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

from typing import Any

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, g, request
from quart_schema import document_querystring, document_response
from werkzeug.datastructures import MultiDict

from query_api.asof import AsOfFolder, KnownValue, fold_as_of, iso_z
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import (
    ObjectFilters,
    page_body,
    parse_list_query,
    parse_time,
    single_values,
)
from query_api.read_audit import audit_read
from query_api.retention import horizon_headers
from query_api.state import current_cache, current_store

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
__all__ = ["AsOfFolder", "KnownValue", "bp", "fold_as_of"]  # the fold lives in query_api.asof


class HistoryArgs(ObjectFilters):
    order: str | None = Field(None, description="asc (default, oldest first) or desc")
    limit: int | None = Field(None, description="1..1000, default 100")
    cursor: str | None = Field(None, description="next_cursor of the previous page")
    as_of: str | None = Field(
        None, description="RFC 3339: answer the object's field values at that time instead"
    )


class HistoryPage(BaseModel):
    target: dict[str, str]
    data: list[dict[str, Any]]
    next_cursor: str | None


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
    store, cache = current_store(), current_cache()

    async def load_page() -> bytes:
        docs = await store.history_page(tenant, query)
        return orjson.dumps({"target": target, **page_body(docs, query.limit)})

    async def load_state() -> bytes:
        assert as_of is not None
        return orjson.dumps(await store.state_as_of(tenant, target_type, target_id, as_of))

    if as_of is not None:
        extra = set(values) - {"tenant", "order"}
        if extra:
            raise Problem(400, f"as_of cannot be combined with {', '.join(sorted(extra))}")
        kind, normalized, loader = "asof", f"{iso_z(as_of)}", load_state
    else:
        kind, normalized, loader = "history", query.normalized(), load_page
    body, state = await cache.get_or_load(
        kind,
        tenant,
        cache.target_scope(tenant, target_type, target_id),
        f"{target_type}\x00{target_id}\x00{normalized}",
        loader,
    )
    filters = {k: v for k, v in query.filters.items() if k not in ("target_type", "target_id")}
    at = None if as_of is None else iso_z(as_of)
    audit_read("history", tenant, filters, body=body, target=target, as_of=at)
    resp = Response(body, content_type="application/json")
    resp.headers["X-Cache"] = state
    resp.headers.update(await horizon_headers(tenant))  # issue 16: results end at the purge
    return resp
