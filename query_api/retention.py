"""``/v1/retention``: a tenant's retention in the hot store (issue 16; docs/archive.md).

``PUT {"days": N}`` keeps the tenant's events N days (by ``received_at``) in
MongoDB; ``{"days": null}`` keeps them forever (the default). ``auditstream
purge`` deletes older events only once the archive holds and verifies them, and
records a purge marker (``purge`` in the answer) that verify starts from. The
change itself is published as an audit event of the tenant
(``retention.policy.changed``, actor = the token's subject).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pymongo.asynchronous.database import AsyncDatabase
from quart import Blueprint, Response, g, request
from quart_schema import document_request, document_response

from audit_events.codec import encode_event
from audit_events.retention import (
    RetentionPolicy,
    marker_view,
    policy_view,
    purge_marker,
    purged_event,
    set_policy,
)
from audit_events.schema import AuditEvent, parse_json
from audit_events.topics import partition_key
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import single_values
from query_api.state import api_state, current_publisher, current_services, current_settings

log = logging.getLogger("auditstream.api.retention")
bp = Blueprint("retention", __name__)
CHANGED_ACTION = "retention.policy.changed"


class RetentionStatus(BaseModel):
    """The tenant's policy (``days`` null: kept forever) and its last purge."""

    tenant: str
    days: int | None = None
    set_at: str | None = None
    set_by: str | None = None
    purge: dict[str, Any] | None = None
    audited: bool | None = None


def _db() -> AsyncDatabase[dict[str, Any]]:
    return current_services().mongo[current_settings().mongo_db]


def _tenant() -> str:
    single_values(request.args, ("tenant",))
    return read_tenant(g.principal, request.args.get("tenant"))


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), status=200, content_type="application/json")


async def _policy() -> RetentionPolicy:
    raw = await request.get_data(cache=False, as_text=False)
    try:
        data = parse_json(raw) if raw else None
    except ValueError as exc:
        raise Problem(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "days" not in data:
        raise Problem(422, 'body must be a JSON object: {"days": N} or {"days": null}')
    try:
        return RetentionPolicy.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()
        ]
        raise Problem(422, "invalid retention policy", errors=errors) from None


async def _audit(tenant: str, days: int | None) -> bool:
    """Publish the change as the tenant's audit event; False when the log is unavailable."""
    event = AuditEvent.model_validate(
        {
            "tenant": tenant,
            "action": CHANGED_ACTION,
            "crud": "u",
            "actor": {"id": g.principal.subject, "type": "admin"},
            "targets": [{"type": "retention_policy", "id": tenant}],
            "source": {"service": "auditstream-api"},
            "metadata": {"days": days},
        }
    )
    try:
        await current_publisher().publish([(partition_key(tenant), encode_event(event))])
    except Exception as exc:  # the policy is saved; say so rather than fail the request
        log.warning("retention of %s saved, audit event not published: %s", tenant, exc)
        return False
    return True


@bp.get("/v1/retention")
@document_response(RetentionStatus)
@require_scope("events:admin")
async def get_retention() -> Response:
    """The tenant's retention (``days`` null: kept forever) and its last purge."""
    return _json(await policy_view(_db(), _tenant()))


@bp.put("/v1/retention")
@document_request(RetentionPolicy)
@document_response(RetentionStatus)
@require_scope("events:admin")
async def put_retention() -> Response:
    """Set the tenant's retention in the hot store (``{"days": null}``: forever); the
    purge job deletes only events the archive holds and verifies."""
    tenant = _tenant()
    policy = await _policy()
    db = _db()
    await set_policy(db, tenant, policy.days, by=g.principal.subject)
    view = await policy_view(db, tenant)
    view["audited"] = await _audit(tenant, policy.days)
    return _json(view)


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
