"""``/v1/masking``: a tenant's masking rules (issue 17; docs/masking.md).

``PUT`` saves a new version of the rules (insert-only, in MongoDB's
``masking_rules``) that the stream processor applies, before the hash chain,
to events received from ``effective_at`` on (AUDITSTREAM_MASKING_DELAY_SECONDS
after the change); events stored before are not rewritten. ``PUT`` with
``{"rules": []}`` clears them. The change itself is published as an audit event
of the tenant (``masking.rules.changed``, actor = the token's subject).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.collection import AsyncCollection
from quart import Blueprint, Response, g
from quart_schema import document_request, document_response

from audit_events.masking import (
    MASKING_COLLECTION,
    MaskingError,
    MaskingRule,
    MaskingRules,
    latest_version,
    save_version,
    version_view,
)
from query_api.admin_requests import json_response, publish_change, read_body, tenant_arg
from query_api.auth import require_scope
from query_api.problems import Problem
from query_api.state import current_services, current_settings

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


@bp.get("/v1/masking")
@document_response(MaskingStatus)
@require_scope("events:admin")
async def get_masking() -> Response:
    """The tenant's masking rules (the newest version and when it takes effect)."""
    tenant = tenant_arg()
    doc = await latest_version(_collection(), tenant)
    return json_response(version_view(doc, tenant, datetime.now(UTC)))


@bp.put("/v1/masking")
@document_request(MaskingRules)
@document_response(MaskingStatus)
@require_scope("events:admin")
async def put_masking() -> Response:
    """Replace the tenant's masking rules (``{"rules": []}`` clears them); they apply to
    events received from ``effective_at`` on, before the hash chain."""
    tenant = tenant_arg()
    rules = await read_body(
        MaskingRules,
        shape=': {"rules": [{"path": ..., "action": ...}]}',
        invalid="invalid masking rules",
    )
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
    view["audited"] = await publish_change(
        tenant,
        CHANGED_ACTION,
        "masking_rules",
        {k: view[k] for k in ("version", "rules", "effective_at")},
    )
    return json_response(view)
