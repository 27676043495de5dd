"""``/v1/retention``: a tenant's retention in the hot store (issue 16; docs/archive.md).

``PUT {"days": N}`` keeps the tenant's events N days (by ``received_at``) in
MongoDB; ``{"days": null}`` keeps them forever (the default). ``auditstream
purge`` deletes older events only once the archive holds and verifies them, and
records a purge marker (``purge`` in the answer) that verify starts from. The
change itself is published as an audit event of the tenant
(``retention.policy.changed``, actor = the token's subject).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase
from quart import Blueprint, Response, g
from quart_schema import document_request, document_response

from audit_events.retention import (
    RetentionPolicy,
    marker_view,
    policy_view,
    purge_marker,
    purged_event,
    set_policy,
)
from query_api.admin_requests import json_response, publish_change, read_body, tenant_arg
from query_api.auth import require_scope
from query_api.problems import Problem
from query_api.state import api_state, current_services, current_settings

bp = Blueprint("retention", __name__)
CHANGED_ACTION = "retention.policy.changed"


class RetentionStatus(BaseModel):
    """The tenant's policy (``days`` null: kept forever; ``version``: its number of
    changes, 0 when never set) and its last purge."""

    tenant: str
    days: int | None = None
    version: int = 0
    set_at: str | None = None
    set_by: str | None = None
    purge: dict[str, Any] | None = None
    audited: bool | None = None


def _db() -> AsyncDatabase[dict[str, Any]]:
    return current_services().mongo[current_settings().mongo_db]


@bp.get("/v1/retention")
@document_response(RetentionStatus)
@require_scope("events:admin")
async def get_retention() -> Response:
    """The tenant's retention (``days`` null: kept forever) and its last purge."""
    return json_response(await policy_view(_db(), tenant_arg()))


@bp.put("/v1/retention")
@document_request(RetentionPolicy)
@document_response(RetentionStatus)
@require_scope("events:admin")
async def put_retention() -> Response:
    """Set the tenant's retention in the hot store (``{"days": null}``: forever); the
    purge job deletes only events the archive holds and verifies."""
    tenant = tenant_arg()
    policy = await read_body(
        RetentionPolicy,
        shape=': {"days": N} or {"days": null}',
        invalid="invalid retention policy",
        required=("days",),
    )
    db = _db()
    # each change gets its own version (concurrent PUTs: the highest version is the
    # policy); the answer and the audit event are this change, whoever wrote last
    saved = await set_policy(db, tenant, policy.days, by=g.principal.subject)
    view = await policy_view(db, tenant, saved)
    view["audited"] = await publish_change(
        tenant,
        CHANGED_ACTION,
        "retention_policy",
        {"days": policy.days, "version": view["version"]},
    )
    return json_response(view)


async def purged_problem(tenant: str, event_id: str) -> Problem | None:
    """The 410 for an event purged from the hot store: where it is archived."""
    services = api_state().services
    if services is None:  # a store without MongoDB (the route tests' fake)
        return None
    where = await purged_event(services.mongo[current_settings().mongo_db], tenant, event_id)
    if where is None:
        return None
    return Problem(
        410,
        f"event {event_id!r} was purged from the hot store by the tenant's retention;"
        f" it is archived in segment {where['segment']}",
        archived=where,
    )


HORIZON_HEADER = "X-Retention-Horizon"


async def horizon_headers(tenant: str) -> dict[str, str]:
    """``X-Retention-Horizon: seq=K; received_before=T; segment=S`` once the tenant's
    events up to seq K were purged: results end there, the rest is in the archive."""
    services = api_state().services
    if services is None:
        return {}
    marker = await purge_marker(services.mongo[current_settings().mongo_db], tenant)
    view = marker_view(marker)
    if view is None:
        return {}
    return {
        HORIZON_HEADER: f"seq={view['through_seq']}; received_before={view['received_before']};"
        f" segment={view['segment']}"
    }
