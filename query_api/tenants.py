"""``GET /v1/tenants`` (the tenants a token may read) and ``GET /v1/suggestions``.

A token for one tenant answers that tenant; a token for a list answers the list;
a token for every tenant (``*``) answers the tenants that have stored events.
"""

from __future__ import annotations

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, g, request
from quart_schema import document_response

from query_api.auth import Principal, read_tenant, require_scope
from query_api.query import single_values
from query_api.state import current_settings, current_store

bp = Blueprint("tenants", __name__)


class TenantList(BaseModel):
    data: list[str] = Field(description="Tenant ids, sorted")
    all_tenants: bool = Field(description="True for a '*' token: any tenant id may be read")


@bp.get("/v1/tenants")
@document_response(TenantList)
@require_scope("events:read")
async def list_tenants() -> Response:
    """The tenants this token may read (for a ``*`` token: those with stored events)."""
    single_values(request.args, ())
    principal: Principal = g.principal
    if principal.tenants is not None:
        names, every = sorted(principal.tenants), False
    else:
        names, every = await current_store().tenants(), True
    body = {"data": names, "all_tenants": every}
    return Response(orjson.dumps(body), content_type="application/json")


SUGGESTED = {"actions": "action", "actors": "actor.id", "target_types": "targets.type"}
MAX_SUGGESTIONS = 500


class Suggestions(BaseModel):
    actions: list[str]
    actors: list[str]
    target_types: list[str]


@bp.get("/v1/suggestions")
@document_response(Suggestions)
@require_scope("events:read")
async def suggestions() -> Response:
    """The distinct actions, actor ids and target types of the tenant's newest
    2,000 events (for search completion).

    At most 500 of each, sorted; erased events add nothing.
    """
    args = single_values(request.args, ("tenant",))
    tenant = read_tenant(g.principal, args.get("tenant"))
    found = await current_store().suggestions(tenant, list(SUGGESTED.values()), MAX_SUGGESTIONS)
    body = {name: found[path] for name, path in SUGGESTED.items()}
    return Response(orjson.dumps(body), content_type="application/json")


class TargetLinks(BaseModel):
    templates: dict[str, str] = Field(
        description="URL template by target type ({id}, {type}, {tenant} filled in)"
    )


@bp.get("/v1/target-links")
@document_response(TargetLinks)
@require_scope("events:read")
async def target_links() -> Response:
    """The tenant's links from a target to the application's page for it.

    From ``AUDITSTREAM_TARGET_URL_TEMPLATES``: the tenant's templates over the
    ``"*"`` ones.
    """
    args = single_values(request.args, ("tenant",))
    tenant = read_tenant(g.principal, args.get("tenant"))
    configured = current_settings().target_url_templates
    templates = {**configured.get("*", {}), **configured.get(tenant, {})}
    return Response(orjson.dumps({"templates": templates}), content_type="application/json")
