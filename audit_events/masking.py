"""Masking rules: what of an event is masked before it is stored (issue 17).

A tenant's rules name field paths into ``metadata``, ``changes``, ``context``
and ``actor``, each with an action:

- ``redact``: the value becomes :data:`MARKER`;
- ``hash``: the value becomes ``hmac:`` + 32 hex digits of HMAC-SHA256 over its
  canonical JSON, keyed per tenant (:func:`tenant_key`), so equal values give
  equal outputs within a tenant (still joinable) and differ across tenants;
- ``truncate_ip``: an IPv4 address keeps its /24, an IPv6 address its /48
  (``203.0.113.77`` -> ``203.0.113.0``); a value that is not an IP address is
  redacted (fail closed).

Paths are dotted: ``metadata.user.email``, ``metadata.*.email`` (``*`` is any
key), ``changes.email`` (both ``old`` and ``new``), ``changes.email.new``,
``context.ip``, ``actor.name``. A list on the way is looked into element by
element. ``null`` values are left as they are.

Masking is pure and idempotent: masking a masked event changes nothing (a hash
output is recognised and kept; the marker and truncated addresses stay what
they are). So the SDK (producers/masking.py) and the stream processor
(stream_processor/masking.py) can both apply the same rules, and a retried
write masks the same way. The stream processor applies them before the hash
chain is sealed (docs/masking.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, field_validator

from audit_events.codec import canonical_json, document_search_terms
from audit_events.schema import AuditEvent

MASKING_COLLECTION = "masking_rules"  # insert-only versions, one document per (tenant, version)
MARKER = "[masked]"
HASH_PREFIX = "hmac:"
HASH_HEX_DIGITS = 32  # 128 bits: joinable, short enough for every Name field
MAX_RULES = 64
MAX_PATH_SEGMENTS = 10
KEY_SALT = b"auditstream-masking-v1"

MaskAction = Literal["redact", "hash", "truncate_ip"]
ROOTS = ("metadata", "changes", "context", "actor")
CONTEXT_FIELDS = ("ip", "user_agent", "request_id", "trace_id")
ACTOR_FIELDS = ("id", "name", "type")
# The fields a stored document's ``search`` array is derived from.
_SEARCHED = ("action", "description", "actor", "targets")
_HASHED = re.compile(rf"^{HASH_PREFIX}[0-9a-f]{{{HASH_HEX_DIGITS}}}$")
_SEGMENT = re.compile(r"^(\*|[^$.\x00*][^.\x00]{0,127})$")


class MaskingError(ValueError):
    """A rule that cannot be used (bad path, hash without a key)."""


def parse_path(path: str) -> tuple[str, ...]:
    """The segments of ``path``; raises :class:`MaskingError` naming what is wrong."""
    segments = tuple(path.split("."))
    root = segments[0]
    if root not in ROOTS:
        raise MaskingError(f"path must start with one of {', '.join(ROOTS)}: {path!r}")
    if len(segments) < 2:
        raise MaskingError(f"path names no field under {root!r}: {path!r}")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise MaskingError(f"path has more than {MAX_PATH_SEGMENTS} segments: {path!r}")
    for segment in segments[1:]:
        if not _SEGMENT.match(segment):
            raise MaskingError(
                f"bad segment {segment!r} in {path!r}: a key (no leading '$', no '.')"
                " or '*' for any key"
            )
    fixed = {"context": CONTEXT_FIELDS, "actor": ACTOR_FIELDS}.get(root)
    if fixed is not None and (len(segments) != 2 or segments[1] not in (*fixed, "*")):
        raise MaskingError(f"{root} paths are {root}.<{'|'.join(fixed)}|*>: {path!r}")
    if root == "changes" and (
        len(segments) > 3 or (len(segments) == 3 and segments[2] not in ("old", "new"))
    ):
        raise MaskingError(f"changes paths are changes.<field>[.old|.new]: {path!r}")
    return segments


class MaskingRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(min_length=1, max_length=512)]
    action: MaskAction

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        parse_path(value)
        return value


class MaskingRules(BaseModel):
    """A tenant's rules, as ``PUT /v1/masking`` takes them and ``GET`` shows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: Annotated[list[MaskingRule], Field(max_length=MAX_RULES)] = []

    @field_validator("rules")
    @classmethod
    def _distinct_paths(cls, value: list[MaskingRule]) -> list[MaskingRule]:
        seen: set[str] = set()
        for rule in value:
            if rule.path in seen:
                raise ValueError(f"path {rule.path!r} has more than one rule")
            seen.add(rule.path)
        return value


def tenant_key(secret: bytes | str, tenant: str) -> bytes:
    """The tenant's HMAC key: HKDF-SHA256 of the deployment's masking secret.

    The processor derives it from ``AUDITSTREAM_MASKING_SECRET``; a producer
    masking in the SDK gets the same key (``auditstream masking key TENANT``)
    without holding the secret of every tenant.
    """
    ikm = secret.encode() if isinstance(secret, str) else secret
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=KEY_SALT, info=tenant.encode())
    return hkdf.derive(ikm)


def hash_value(key: bytes, value: Any) -> str:
    """``hmac:`` + 32 hex digits; a value that already is such an output is kept."""
    if isinstance(value, str) and _HASHED.match(value):
        return value
    digest = hmac.digest(key, canonical_json(value), "sha256")
    return HASH_PREFIX + digest[: HASH_HEX_DIGITS // 2].hex()


def truncate_ip(value: Any) -> Any:
    """/24 of an IPv4, /48 of an IPv6 address (each address of a list); else the marker."""
    if isinstance(value, list):
        return [truncate_ip(v) for v in value]
    if not isinstance(value, str):
        return MARKER
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return MARKER
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def _redact(value: Any) -> Any:
    return MARKER


Transform = Callable[[Any], Any]


def _masked(value: Any, segments: tuple[str, ...], fn: Transform) -> Any:
    """``value`` with ``fn`` applied at ``segments``; containers copied only along the way."""
    if isinstance(value, list):
        items = [_masked(item, segments, fn) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if not isinstance(value, dict) or not segments:
        return value
    head, rest = segments[0], segments[1:]
    keys: Iterable[str] = value.keys() if head == "*" else ((head,) if head in value else ())
    out: dict[str, Any] | None = None
    for key in keys:
        child = value[key]
        if child is None:
            continue
        new = fn(child) if not rest else _masked(child, rest, fn)
        if new is not child and new != child:
            if out is None:
                out = dict(value)
            out[key] = new
    return value if out is None else out


@dataclass(frozen=True)
class _Compiled:
    root: str
    segments: tuple[str, ...]  # below the root
    fn: Transform


class Masker:
    """Applies one tenant's rules; ``key`` is needed only by ``hash`` rules.

    Without a key a ``hash`` rule redacts instead (the original is never kept).
    """

    def __init__(self, rules: MaskingRules | list[MaskingRule], key: bytes | None) -> None:
        items = rules.rules if isinstance(rules, MaskingRules) else rules
        self.rules = list(items)
        self.hashes = key is not None
        compiled: list[_Compiled] = []
        for rule in self.rules:
            segments = parse_path(rule.path)
            fn = self._transform(rule.action, key)
            root, below = segments[0], segments[1:]
            if root == "changes" and len(below) == 1:  # a changed field: both old and new
                compiled += [_Compiled(root, (*below, side), fn) for side in ("old", "new")]
            else:
                compiled.append(_Compiled(root, below, fn))
        self._compiled = tuple(compiled)

    @staticmethod
    def _transform(action: MaskAction, key: bytes | None) -> Transform:
        if action == "hash" and key is not None:
            return lambda value: hash_value(key, value)
        if action == "truncate_ip":
            return truncate_ip
        return _redact

    def __bool__(self) -> bool:
        return bool(self._compiled)

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` (a wire dict or a stored document) masked; unchanged input is returned
        as is, a changed one is a new dict (the input is never modified).

        A stored document's ``search`` terms are derived again when a field they come
        from changed (words and index tokens: no unmasked value stays in the index).
        """
        out: dict[str, Any] | None = None
        for rule in self._compiled:
            current = event if out is None else out
            section = current.get(rule.root)
            if section is None:
                continue
            new = _masked(section, rule.segments, rule.fn)
            if new is not section:
                if out is None:
                    out = dict(event)
                out[rule.root] = new
        if out is None:
            return event
        if "search" in out and any(out.get(k) != event.get(k) for k in _SEARCHED):
            out["search"] = document_search_terms(out)
        return out


def mask_event(event: AuditEvent, masker: Masker) -> AuditEvent:
    """``event`` with ``masker`` applied (validated again: masked values fit the schema)."""
    if not masker:
        return event
    wire = event.model_dump(mode="json", exclude_none=True)
    masked = masker.apply(wire)
    if masked is wire:
        return event
    return AuditEvent.model_validate(masked)


# --- Stored versions (the API, the CLI and the processor share them) ---------


def as_ms(value: datetime) -> int:
    """Milliseconds since the epoch of a stored time (naive = UTC, as BSON)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def version_id(tenant: str, version: int) -> str:
    return f"{tenant}:{version}"  # a tenant name holds no ':'


def new_version(
    tenant: str,
    rules: MaskingRules,
    *,
    version: int,
    now: datetime,
    delay_seconds: float,
    by: str,
) -> dict[str, Any]:
    """The document of a new rules version, effective ``delay_seconds`` after ``now``.

    Versions are only ever inserted: the collection is the history of who
    changed what when. An event is masked by the version in force at its
    ``received_at`` (its Kafka record time), so a redelivery or a replay masks
    it exactly as the first pass did; the delay lets every processor's cached
    rules learn of the version before any event it applies to arrives.
    """
    effective = now + timedelta(seconds=delay_seconds)
    effective = effective.replace(microsecond=effective.microsecond // 1000 * 1000)
    return {
        "_id": version_id(tenant, version),
        "tenant": tenant,
        "version": version,
        "rules": [r.model_dump() for r in rules.rules],
        "effective_at": effective,
        "set_at": now,
        "set_by": by,
    }


async def latest_version(collection: Any, tenant: str) -> dict[str, Any] | None:
    """The newest stored version of ``tenant``'s rules (``collection``: async PyMongo)."""
    doc: dict[str, Any] | None = await collection.find_one(
        {"tenant": tenant}, sort=[("version", -1)]
    )
    return doc


async def save_version(
    collection: Any,
    tenant: str,
    rules: MaskingRules,
    *,
    now: datetime,
    delay_seconds: float,
    by: str,
    attempts: int = 100,
) -> dict[str, Any]:
    """Insert the next version of ``tenant``'s rules; a concurrent writer's version wins
    its number and this one takes the next.

    A version never takes effect before the one below it: the processor picks the
    rules in force by ``effective_at``, ``GET /v1/masking`` shows the highest version,
    and both must name the same rules. (Two concurrent changes: the one that read
    the clock first may lose the number race and become the newer version.) Each
    failed attempt means another writer saved a version, so ``attempts`` only runs
    out under that many concurrent changes.
    """
    from pymongo.errors import DuplicateKeyError

    for _ in range(attempts):
        latest = await latest_version(collection, tenant)
        doc = new_version(
            tenant,
            rules,
            version=(int(latest["version"]) if latest else 0) + 1,
            now=now,
            delay_seconds=delay_seconds,
            by=by,
        )
        if latest is not None and as_ms(latest["effective_at"]) > as_ms(doc["effective_at"]):
            doc["effective_at"] = latest["effective_at"]
        try:
            await collection.insert_one(doc)
        except DuplicateKeyError:
            continue
        return doc
    raise MaskingError("the rules changed concurrently too often; try again")


def version_view(doc: dict[str, Any] | None, tenant: str, now: datetime) -> dict[str, Any]:
    """What ``GET /v1/masking`` and ``auditstream masking show`` print."""
    if doc is None:
        return {"tenant": tenant, "version": 0, "rules": [], "effective_at": None, "pending": False}
    effective: datetime = doc["effective_at"]
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=UTC)
    set_at: datetime = doc["set_at"]
    if set_at.tzinfo is None:
        set_at = set_at.replace(tzinfo=UTC)
    return {
        "tenant": tenant,
        "version": doc["version"],
        "rules": doc["rules"],
        "effective_at": _iso(effective),
        "pending": effective > now,
        "set_at": _iso(set_at),
        "set_by": doc.get("set_by"),
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
