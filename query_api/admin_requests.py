"""What the tenant-admin endpoints (``/v1/streams``, ``/v1/masking``,
``/v1/retention``) share: the ``tenant`` argument, a JSON body read into a model
with problem+json errors, the JSON answer, and the audit event of a change."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from quart import Response, g, request

from audit_events.codec import encode_event
from audit_events.schema import MAX_NAME_CHARS, AuditEvent, parse_json
from audit_events.topics import partition_key
from query_api.auth import read_tenant
from query_api.problems import Problem
from query_api.query import single_values
from query_api.state import current_publisher

log = logging.getLogger("auditstream.api.admin")
M = TypeVar("M", bound=BaseModel)


def tenant_arg() -> str:
    """The ``tenant`` query argument (once at most), checked against the token."""
    single_values(request.args, ("tenant",))
    return read_tenant(g.principal, request.args.get("tenant"))


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


async def read_body(
    model: type[M], *, shape: str, invalid: str, required: tuple[str, ...] = ()
) -> M:
    """The request's JSON object as ``model``: 400 when it is not JSON, 422 (with
    ``shape`` as the hint) when it is not an object or lacks a ``required`` key, 422
    with every field error (``invalid`` as the title) when the model refuses it."""
    raw = await request.get_data(cache=False, as_text=False)
    try:
        data = parse_json(raw) if raw else None
    except ValueError as exc:
        raise Problem(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or any(key not in data for key in required):
        raise Problem(422, f"body must be a JSON object{shape}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()
        ]
        raise Problem(422, invalid, errors=errors) from None


async def publish_change(
    tenant: str, action: str, target_type: str, metadata: dict[str, Any]
) -> bool:
    """Publish an admin's saved change as the tenant's audit event; False when the
    log is unavailable (the change is saved: the answer says so rather than fail)."""
    return await publish_event(
        {
            "tenant": tenant,
            "action": action,
            "crud": "u",
            "actor": {"id": g.principal.subject, "type": "admin"},
            "targets": [{"type": target_type, "id": tenant}],
            "source": {"service": "auditstream-api"},
            "metadata": metadata,
        }
    )


def fitting_actor_id(subject: str) -> str:
    """``subject`` as an actor id: itself, or when longer than MAX_NAME_CHARS characters
    its first 180 and ``…sha256=<hex of all of it>`` (one subject, one id)."""
    if len(subject) <= MAX_NAME_CHARS:
        return subject
    digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{subject[:180]}…sha256={digest}"


async def publish_event(fields: dict[str, Any]) -> bool:
    """Publish the audit event ``fields`` of an admin's saved change (as
    :func:`publish_change`); False when the log is unavailable, or when no valid
    event can say it: the change is saved, and a 500 would make the client retry it.
    A token subject longer than an actor id may be (an external issuer's) is named
    by :func:`fitting_actor_id`."""
    actor = fields.get("actor")
    if isinstance(actor, dict) and isinstance(actor.get("id"), str):
        fields = {**fields, "actor": {**actor, "id": fitting_actor_id(actor["id"])}}
    try:
        event = AuditEvent.model_validate(fields)
    except ValidationError as exc:
        log.error(
            "%s of %s saved, but it makes no valid audit event: %s",
            fields.get("action"),
            fields.get("tenant"),
            exc,
        )
        return False
    tenant, action = event.tenant, event.action
    try:
        await current_publisher().publish([(partition_key(tenant), encode_event(event))])
    except Exception as exc:
        log.warning("%s of %s saved, audit event not published: %s", action, tenant, exc)
        return False
    return True
