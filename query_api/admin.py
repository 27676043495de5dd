"""Corrections (PUT) and erasures (DELETE) of events — through the log.

Neither touches MongoDB: each publishes a control event (an ordinary audit
event in the reserved ``auditstream.`` namespace, actor = the admin, description
= the reason) to the events topic; the processor chains it like any event and
then applies it. 202 once Kafka acknowledged; with ``?wait=true``, 200 (the
corrected view) / 204 once applied, or 202 if that takes longer than 5 s.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from quart import Blueprint, Response, current_app, g, request

from audit_events.chain import (
    CONTROL_ACTIONS,
    CORRECTABLE_FIELDS,
    CORRECTED_ACTION,
    ERASED_ACTION,
    event_fields,
    load_private_key,
    sign_control,
)
from audit_events.codec import (
    corrected,
    corrected_view,
    document_to_api,
    encode_event,
    event_wire_dict,
)
from audit_events.schema import AuditEvent, limits_from, parse_json
from audit_events.topics import partition_key
from query_api.auth import Principal, read_tenant, require_scope
from query_api.problems import Problem
from query_api.publisher import PublishFailed
from query_api.query import single_values
from query_api.state import current_publisher, current_settings, current_store
from query_api.store import StoreUnavailable

bp = Blueprint("admin", __name__)
WAIT_SECONDS = 5.0
MAX_REASON = 1024


async def _body() -> dict[str, Any]:
    raw = await request.get_data(cache=False, as_text=False)
    if not raw:
        return {}
    try:  # the processor's JSON parser: big integers stay exact (and are refused)
        body = parse_json(raw)
    except ValueError as exc:
        raise Problem(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Problem(422, "body must be a JSON object")
    return body


def _reason(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON:
        raise Problem(422, f"a reason (1..{MAX_REASON} characters) is required")
    return value


async def _target(event_id: str, tenant: str) -> dict[str, Any]:
    doc = await current_store().get(tenant, event_id)
    if doc is None:
        raise Problem(404, f"no event {event_id!r}")
    if doc.get("action") in CONTROL_ACTIONS:
        raise Problem(409, "corrections and erasures cannot themselves be changed")
    return doc


async def _publish(event: AuditEvent) -> None:
    raw = encode_event(event)
    limit = current_settings().max_event_bytes
    if len(raw) > limit:  # the processor would dead-letter it as oversized
        raise Problem(413, f"the correction makes a control event over {limit} bytes")
    try:
        await current_publisher().publish([(partition_key(event.tenant), raw)])
    except PublishFailed as exc:
        raise Problem(
            503, f"event log unavailable: retry the request ({exc})", headers={"Retry-After": "5"}
        ) from None


def _control(
    principal: Principal, tenant: str, action: str, event_id: str, reason: str, **extra: Any
) -> AuditEvent:
    """The control event, signed: ``metadata.proof`` proves the API issued it.

    Only the API holds the control signing key; the processor dead-letters any
    event in the reserved namespace without a valid proof (docs/chain.md).
    """
    settings = current_settings()
    if settings.control_signing_key is None:
        raise Problem(503, "corrections and erasures are disabled: no control signing key")
    limits = limits_from(settings)
    unsigned = AuditEvent.model_validate(
        {
            "tenant": tenant,
            "action": action,
            "crud": "u" if action == CORRECTED_ACTION else "d",
            "actor": {"id": principal.subject, "type": "admin"},
            "targets": [{"type": "audit_event", "id": event_id}],
            "description": reason,
            **extra,
        },
        context={"limits": limits},
    )
    key = load_private_key(settings.control_signing_key.get_secret_value())
    signed = sign_control(key, event_wire_dict(unsigned))
    try:  # what the processor will check, with its limits
        return AuditEvent.model_validate(signed, context={"limits": limits})
    except ValidationError as exc:
        why = exc.errors()[0]["msg"]
        raise Problem(422, f"the control event would be invalid: {why}") from None


async def _wait_applied(
    tenant: str, event_id: str, control_id: str | None, before: dict[str, Any]
) -> dict[str, Any] | None:
    """The event once the control event is applied (``control_id``: the correction;
    None: the erasure); None (answer 202: it is in Kafka) after ``WAIT_SECONDS`` or
    when the store is away. Looks again when the processor announces a stored batch.
    ``before`` (the event as read before the change): its scopes are invalidated too."""
    try:
        return await current_store().wait_applied(
            tenant, event_id, control_id, WAIT_SECONDS, before
        )
    except StoreUnavailable as exc:
        current_app.logger.warning("?wait=true could not confirm the change: %s", exc)
        return None


def _wants_wait() -> bool:
    args = single_values(request.args, ("wait", "tenant", "reason"))
    return args.get("wait", "false").lower() in ("1", "true", "yes")


def _accepted(control: AuditEvent, event_id: str) -> Response:
    body = {"id": control.id, "event_id": event_id, "status": "accepted"}
    resp = Response(orjson.dumps(body), status=202, content_type="application/json")
    resp.headers["Location"] = f"/v1/events/{event_id}"
    return resp


@bp.put("/v1/events/<event_id>")
@require_scope("events:admin")
async def correct_event(event_id: str) -> Response:
    """Correct fields of an event: body ``{"reason": "...", "set": {field: value}}``."""
    wait = _wants_wait()
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    body = await _body()
    reason = _reason(body.get("reason"))
    changes = body.get("set")
    if not isinstance(changes, dict) or not changes:
        raise Problem(422, "'set' must be a non-empty object of fields to correct")
    unknown = sorted(set(changes) - CORRECTABLE_FIELDS)
    if unknown:
        raise Problem(422, f"these fields cannot be corrected: {', '.join(unknown)}")
    target = await _target(event_id, tenant)
    if target.get("erased"):
        raise Problem(409, f"event {event_id!r} was erased; it cannot be corrected")
    # Published as named: ``actor``, ``source`` and ``context`` are amended field by
    # field when the correction is applied and read (codec.corrected), so a concurrent
    # correction of another field of the same object is kept.
    limits = limits_from(current_settings())
    try:  # the corrected view must still be a valid event
        AuditEvent.model_validate(
            event_fields(corrected(corrected_view(target), changes)), context={"limits": limits}
        )
    except ValidationError as exc:
        errors = [
            {"loc": ["set", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise Problem(422, "the corrected event would be invalid", errors=errors) from None
    control = _control(
        g.principal, tenant, CORRECTED_ACTION, event_id, reason, metadata={"set": changes}
    )
    await _publish(control)
    if wait:
        doc = await _wait_applied(tenant, event_id, control.id, target)
        if doc is not None:
            return Response(orjson.dumps(document_to_api(doc)), content_type="application/json")
    return _accepted(control, event_id)


@bp.delete("/v1/events/<event_id>")
@require_scope("events:admin")
async def erase_event(event_id: str) -> Response:
    """Erase an event's payload (``?reason=`` or body ``{"reason": "..."}``)."""
    wait = _wants_wait()
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    reason = _reason(request.args.get("reason") or (await _body()).get("reason"))
    target = await _target(event_id, tenant)
    if target.get("erased"):
        return Response(status=204)  # a second erasure is a no-op
    control = _control(g.principal, tenant, ERASED_ACTION, event_id, reason)
    await _publish(control)
    if wait and await _wait_applied(tenant, event_id, None, target):
        return Response(status=204)
    return _accepted(control, event_id)
