"""Audit event schema, version 1 (pydantic v2).

The same model validates events in the SDK, the HTTP API and the stream
processor, so all three accept and reject exactly the same input. Limits on the
free-form fields (``metadata``, ``changes.*.old``/``new``) can be tightened per
deployment by passing ``context={"limits": Limits(...)}`` (see
:func:`limits_from`) to ``model_validate``/``model_validate_json``; the HTTP API
parses bodies with :func:`parse_json`, the parser ``model_validate_json`` uses,
so integers beyond 64 bits stay exact (and are refused) on both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
import pydantic_core
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

MAX_NAME_CHARS = 256  # an id or name (of an actor, a target, a source)
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_CHARS)]
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
    """Bounds on free-form data; the processor and the API pass their configured values.

    ``max_metadata_depth`` bounds every free-form value: ``metadata`` (the
    object itself is level 1) and each ``changes.*.old``/``new`` (a scalar is
    level 0, an object or array 1, ...).
    """

    max_metadata_bytes: int = 64 * 1024
    max_metadata_depth: int = 8


DEFAULT_LIMITS = Limits()

# MongoDB refuses documents nested deeper than 100 levels. A free-form value is
# stored at most this many levels down (a correction of ``changes``:
# doc > corrections > [i] > set|previous > changes > field > {old,new} > value),
# so whatever the configured limit, no value may nest deeper than the rest.
MONGO_MAX_DEPTH = 100
STORED_ENVELOPE_DEPTH = 8
MAX_FREE_FORM_DEPTH = MONGO_MAX_DEPTH - STORED_ENVELOPE_DEPTH
# Control events (``auditstream.`` actions, issued by the API; audit_events.chain)
# carry a correction in ``metadata.set``: a corrected ``changes`` value sits
# under ``metadata > set > changes > {field: {old, new}}`` (4 levels), and a
# corrected ``metadata`` can be as large as the limit. The corrected event itself
# is validated with the normal limits (query_api.admin), so the wrapper may hold them.
CONTROL_ACTION_PREFIX = "auditstream."
CONTROL_ENVELOPE_DEPTH = 4


def limits_from(settings: Any) -> Limits:
    """The :class:`Limits` of a settings object (``AuditSettings``): one source for all."""
    return Limits(settings.max_metadata_bytes, settings.max_metadata_depth)


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON exactly as ``AuditEvent.model_validate_json`` does (pydantic-core).

    Integers of any size stay exact ints (orjson turns those beyond 64 bits into
    lossy floats), lone surrogates are refused; NaN/Infinity (and ``1e999``) are
    read as floats, which the validator refuses (as it refuses ints beyond 64
    bits). Raises :class:`ValueError` on invalid JSON.
    """
    return pydantic_core.from_json(raw)


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


def _check_numbers(value: Any, path: str) -> None:
    """Refuse integers BSON cannot store and NaN/Infinity (iterative: no recursion
    limit to hit). JSON has no NaN or Infinity, yet the parser reads them (and
    ``1e999`` as infinity); serialised, they became ``null``: the event published,
    hashed and stored would not be the one received."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, bool):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{item} at {where or 'top level'} is not a finite number")
        if isinstance(item, int):
            if not INT64[0] <= item <= INT64[1]:
                raise ValueError(f"integer at {where or 'top level'} does not fit in 64 bits")
        elif isinstance(item, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]


def _check_free_form(
    value: Any, what: str, limits: Limits, *, self_level: int, extra_depth: int = 0
) -> None:
    """Depth, 64-bit integers and storable keys of one free-form value.

    ``self_level`` is the level of ``value`` itself when it is a container
    (``metadata``: 1; a change's ``old``/``new``: 1 as well, a scalar being 0).
    """
    max_depth = min(limits.max_metadata_depth + extra_depth, MAX_FREE_FORM_DEPTH)
    if _depth(value, self_level) > max_depth:
        raise ValueError(f"{what} nested deeper than {max_depth} levels")
    _check_numbers(value, "")
    _check_keys(value, "")


class Change(_Strict):
    old: JsonValue = None
    new: JsonValue = None

    @field_validator("old", "new")
    @classmethod
    def _storable(cls, value: JsonValue, info: ValidationInfo) -> JsonValue:
        limits = (info.context or {}).get("limits", DEFAULT_LIMITS)
        _check_free_form(value, f"changes value '{info.field_name}'", limits, self_level=1)
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


def _depth(value: Any, self_level: int = 1) -> int:
    """Nesting levels of containers in ``value`` (iterative); a scalar adds none."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, self_level)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in item]
    return deepest


def _check_keys(value: Any, path: str) -> None:
    """Keys MongoDB stores as they are: no leading '$', no '.', no NUL (iterative)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key.startswith("$") or "." in key or "\x00" in key:
                    raise ValueError(f"key {where}{key!r} must not start with '$' or contain '.'")
                stack.append((child, f"{where}{key}."))
        elif isinstance(item, list):
            stack += [(child, where) for child in item]


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
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
            raise ValueError("occurred_at is outside the years 1-9999 in UTC") from None
        return value.replace(microsecond=value.microsecond // 1000 * 1000)

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, JsonValue], info: ValidationInfo) -> dict[str, JsonValue]:
        limits = (info.context or {}).get("limits", DEFAULT_LIMITS)
        control = str(info.data.get("action", "")).startswith(CONTROL_ACTION_PREFIX)
        extra = CONTROL_ENVELOPE_DEPTH if control else 0
        # depth and numbers before orjson, which fails on deep nesting and on ints beyond 64 bits
        _check_free_form(value, "metadata", limits, self_level=1, extra_depth=extra)
        size = len(orjson.dumps(value))
        if size > limits.max_metadata_bytes and not control:  # control: event size bounds it
            raise ValueError(f"metadata is {size} bytes, limit {limits.max_metadata_bytes}")
        return value
