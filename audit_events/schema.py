"""Audit event schema, version 1 (pydantic v2).

The same model validates events in the SDK, the HTTP API and the stream
processor, so all three accept and reject exactly the same input. Limits on
``metadata`` can be tightened per deployment by passing
``context={"limits": Limits(...)}`` to ``model_validate``/``model_validate_json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from audit_events.ids import uuid7

SCHEMA_VERSION = 1

Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=1024)]
EventId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")]
Tenant = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")]
Action = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length=128),
]
FieldName = Annotated[str, StringConstraints(pattern=r"^[^$.\x00][^.\x00]{0,127}$")]


@dataclass(frozen=True)
class Limits:
    """Bounds on free-form data; the processor passes its configured values."""

    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 8


DEFAULT_LIMITS = Limits()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Actor(_Strict):
    id: Name
    type: Name = "user"
    name: Name | None = None


class Target(_Strict):
    type: Name
    id: Name
    name: Name | None = None


INT64 = (-(2**63), 2**63 - 1)  # what BSON can store; larger ints would poison the store


def _check_ints(value: Any, path: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"integer at {path or 'top level'} does not fit in 64 bits")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_ints(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_ints(item, f"{path}[{i}]")


class Change(_Strict):
    old: JsonValue = None
    new: JsonValue = None

    @field_validator("old", "new")
    @classmethod
    def _storable(cls, value: JsonValue) -> JsonValue:
        _check_ints(value, "")
        return value


class Context(_Strict):
    ip: Annotated[str, StringConstraints(max_length=64)] | None = None
    user_agent: Text | None = None
    request_id: Name | None = None
    trace_id: Name | None = None


class Source(_Strict):
    service: Name
    component: Name | None = None
    version: Name | None = None


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level - 1 if level > 1 else level


def _check_keys(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                raise ValueError(f"key {path}{key!r} must not start with '$' or contain '.'")
            _check_keys(item, f"{path}{key}.")
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, path)


class AuditEvent(_Strict):
    """Who did what to which object, when, from where."""

    id: EventId = Field(default_factory=uuid7, description="Idempotency key (UUIDv7/ULID).")
    tenant: Tenant = Field(description="Isolation boundary and partition key.")
    action: Action = Field(description="Dotted verb, e.g. invoice.update.")
    crud: Literal["c", "r", "u", "d"] | None = None
    occurred_at: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC), validate_default=True
    )
    actor: Actor | None = None
    targets: Annotated[list[Target], Field(max_length=32)] = []
    outcome: Literal["success", "failure", "denied"] = "success"
    description: Annotated[str, StringConstraints(max_length=4096)] | None = None
    changes: Annotated[dict[FieldName, Change], Field(max_length=256)] = {}
    context: Context | None = None
    source: Source | None = None
    metadata: dict[str, JsonValue] = {}

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # Milliseconds, UTC: what BSON dates hold, so the stored form is the received form.
        value = value.astimezone(UTC)
        return value.replace(microsecond=value.microsecond // 1000 * 1000)

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, JsonValue], info: ValidationInfo) -> dict[str, JsonValue]:
        limits = (info.context or {}).get("limits", DEFAULT_LIMITS)
        if _depth(value) > limits.max_metadata_depth:
            raise ValueError(f"metadata nested deeper than {limits.max_metadata_depth} levels")
        _check_ints(value, "")  # before orjson, which raises TypeError beyond 64 bits
        size = len(orjson.dumps(value))
        if size > limits.max_metadata_bytes:
            raise ValueError(f"metadata is {size} bytes, limit {limits.max_metadata_bytes}")
        _check_keys(value, "")
        return value
