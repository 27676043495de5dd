"""``/v1/masking``: a tenant's masking rules (issue 17; docs/masking.md).

``PUT`` saves a new version of the rules (insert-only, in MongoDB's
``masking_rules``) that the stream processor applies, before the hash chain,
to events received from ``effective_at`` on (AUDITSTREAM_MASKING_DELAY_SECONDS
after the change); events stored before are not rewritten. ``PUT`` with
``{"rules": []}`` clears them. The change itself is published as an audit event
of the tenant (``masking.rules.changed``, actor = the token's subject).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pymongo.asynchronous.collection import AsyncCollection
from quart import Blueprint, Response, g, request
from quart_schema import document_request, document_response

from audit_events.codec import encode_event
from audit_events.masking import (
    MASKING_COLLECTION,
    MaskingError,
    MaskingRule,
    MaskingRules,
    latest_version,
    save_version,
    version_view,
)
from audit_events.schema import AuditEvent, parse_json
from audit_events.topics import partition_key
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import single_values
from query_api.state import current_publisher, current_services, current_settings

log = logging.getLogger("auditstream.api.masking")
bp = Blueprint("masking", __name__)
CHANGED_ACTION = "masking.rules.changed"


class MaskingStatus(BaseModel):
    """The tenant's newest rules version; ``pending`` until ``effective_at``."""

    tenant: str
    version: int
    rules: list[MaskingRule]
    effective_at: str | None = None
    pending: bool
    set_at: str | None = None
    set_by: str | None = None
    audited: bool | None = None


def _collection() -> AsyncCollection[dict[str, Any]]:
    return current_services().mongo[current_settings().mongo_db][MASKING_COLLECTION]


def _tenant() -> str:
    single_values(request.args, ("tenant",))
    return read_tenant(g.principal, request.args.get("tenant"))


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), status=200, content_type="application/json")


async def _rules() -> MaskingRules:
    raw = await request.get_data(cache=False, as_text=False)
    try:
        data = parse_json(raw) if raw else None
    except ValueError as exc:
        raise Problem(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Problem(422, 'body must be a JSON object: {"rules": [{"path": ..., "action": ...}]}')
    try:
        return MaskingRules.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()
        ]
        raise Problem(422, "invalid masking rules", errors=errors) from None


async def _audit(tenant: str, view: dict[str, Any]) -> bool:
    """Publish the change as the tenant's audit event; False when the log is unavailable."""
    event = AuditEvent.model_validate(
        {
            "tenant": tenant,
            "action": CHANGED_ACTION,
            "crud": "u",
            "actor": {"id": g.principal.subject, "type": "admin"},
            "targets": [{"type": "masking_rules", "id": tenant}],
            "source": {"service": "auditstream-api"},
            "metadata": {k: view[k] for k in ("version", "rules", "effective_at")},
        }
    )
    try:
        await current_publisher().publish([(partition_key(tenant), encode_event(event))])
    except Exception as exc:  # the rules are saved; say so rather than fail the request
        log.warning("masking rules of %s saved, audit event not published: %s", tenant, exc)
        return False
    return True


@bp.get("/v1/masking")
@document_response(MaskingStatus)
@require_scope("events:admin")
async def get_masking() -> Response:
    """The tenant's masking rules (the newest version and when it takes effect)."""
    tenant = _tenant()
    doc = await latest_version(_collection(), tenant)
    return _json(version_view(doc, tenant, datetime.now(UTC)))


@bp.put("/v1/masking")
@document_request(MaskingRules)
@document_response(MaskingStatus)
@require_scope("events:admin")
async def put_masking() -> Response:
    """Replace the tenant's masking rules (``{"rules": []}`` clears them); they apply to
    events received from ``effective_at`` on, before the hash chain."""
    tenant = _tenant()
    rules = await _rules()
    now = datetime.now(UTC)
    try:
        doc = await save_version(
            _collection(),
            tenant,
            rules,
            now=now,
            delay_seconds=current_settings().masking_delay_seconds,
            by=g.principal.subject,
        )
    except MaskingError as exc:
        raise Problem(409, str(exc)) from None
    view = version_view(doc, tenant, now)
    view["audited"] = await _audit(tenant, view)
    return _json(view)
