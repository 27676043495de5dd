"""Building and validating events locally, before anything is sent.

:func:`build_event` accepts an :class:`~audit_events.schema.AuditEvent`, a dict, or
keyword arguments with a few conveniences (``actor="alice"``,
``target=("invoice", "42")``, ``changes={"total": (10, 12)}``) and returns a
validated event, or raises :class:`~producers.errors.InvalidEvent` naming each
offending field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from audit_events.schema import AuditEvent
from producers.errors import InvalidEvent


def _model_dict(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


def _actor(value: Any) -> Any:
    if isinstance(value, str):
        return {"id": value}
    return _model_dict(value)


def _target(value: Any) -> Any:
    if isinstance(value, tuple | list) and len(value) in (2, 3):
        keys = ("type", "id", "name")
        return dict(zip(keys, value, strict=False))
    if isinstance(value, str) and ":" in value:
        kind, _, ident = value.partition(":")
        return {"type": kind, "id": ident}
    return _model_dict(value)


def _change(value: Any) -> Any:
    if isinstance(value, tuple | list) and len(value) == 2:
        return {"old": value[0], "new": value[1]}
    return _model_dict(value)


def normalize(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the keyword conveniences; the result is what the schema validates."""
    data = dict(fields)
    if "actor" in data and data["actor"] is not None:
        data["actor"] = _actor(data["actor"])
    if "target" in data:
        target = data.pop("target")
        if target is not None:
            data["targets"] = [target, *data.get("targets", [])]
    if "targets" in data and isinstance(data["targets"], list | tuple):
        data["targets"] = [_target(t) for t in data["targets"]]
    if isinstance(data.get("changes"), Mapping):
        data["changes"] = {k: _change(v) for k, v in data["changes"].items()}
    for key in ("context", "source"):
        if key in data:
            data[key] = _model_dict(data[key])
    return {k: v for k, v in data.items() if v is not None}


def _errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "event"
        out.append((field, err["msg"]))
    return out


def build_event(
    event: AuditEvent | Mapping[str, Any] | None = None,
    /,
    *,
    defaults: Mapping[str, Any] | None = None,
    **fields: Any,
) -> AuditEvent:
    """Return a validated event; raise :class:`InvalidEvent` naming the bad fields.

    ``defaults`` fill fields the event leaves unset (e.g. the producer's ``source``).
    An :class:`AuditEvent` passed without ``defaults`` or ``fields`` is returned as is.
    """
    if isinstance(event, AuditEvent):
        if not defaults and not fields:
            return event
        data: dict[str, Any] = event.model_dump(exclude_none=True)
    elif event is None:
        data = {}
    elif isinstance(event, Mapping):
        data = dict(event)
    else:
        raise InvalidEvent([("event", f"expected an AuditEvent or a mapping, not {type(event)}")])
    data.update(fields)
    for key, value in (defaults or {}).items():
        if data.get(key) is None:
            data[key] = value
    try:
        return AuditEvent.model_validate(normalize(data))
    except ValidationError as exc:
        raise InvalidEvent(_errors(exc)) from None
