"""Log streams (issue 17): a tenant's outbound destinations, as plain data.

The query API stores destinations (``POST/GET/PUT/DELETE /v1/streams``); the
stream worker (``auditstream streamer``) reads them and delivers the tenant's
stored events in ``seq`` order. Both share this module; neither imports the
other. See docs/streams.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import socket
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from audit_events.chain import CONTROL_ACTIONS, event_fields
from audit_events.codec import canonical_json
from audit_events.stream_secrets import SECRET_FIELDS, SecretKeyError, StreamSecrets

STREAMS_COLLECTION = "streams"
STREAM_DEAD_LETTERS_COLLECTION = "stream_dead_letters"
KINDS = ("webhook", "splunk_hec", "datadog", "syslog", "s3")
Kind = Literal["webhook", "splunk_hec", "datadog", "syslog", "s3"]
SYSLOG_SCHEME = "syslog+tls"  # syslog+tls://host:6514 (RFC 5425: RFC 5424 over TLS)
# s3://bucket/prefix (AWS), s3+https://host:port/bucket/prefix (an S3-compatible endpoint)
S3_SCHEMES = ("s3", "s3+https", "s3+http")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_S3_PREFIX = re.compile(r"^[A-Za-z0-9!\-_.*'()/=]{0,512}$")
_REGION = re.compile(r"^[a-z0-9\-]{1,32}$")
_ACCESS_KEY_ID = re.compile(r"^[A-Za-z0-9+/=_\-]{3,128}$")
Outcome = Literal["success", "failure", "denied"]
DATADOG_DEFAULT_URL = "https://http-intake.logs.datadoghq.com/api/v2/logs"
SIGNATURE_HEADER = "X-Auditstream-Signature"
TIMESTAMP_HEADER = "X-Auditstream-Timestamp"
# The same action syntax as GET /v1/events?action=: exact, or a prefix 'invoice.*'.
_ACTION = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*(\.\*)?$")


class StreamFilter(BaseModel):
    """Which events a destination receives (empty lists: all).

    ``actions`` uses ``GET /v1/events``' action syntax (``user.login`` or
    ``invoice.*``); ``outcomes`` its outcome values. Corrections and erasures
    (``auditstream.event.*``) are always delivered: they may concern events the
    destination already holds.
    """

    model_config = ConfigDict(extra="forbid")
    actions: list[str] = Field(default_factory=list, max_length=100)
    outcomes: list[Outcome] = Field(default_factory=list, max_length=3)

    @field_validator("actions")
    @classmethod
    def _actions(cls, value: list[str]) -> list[str]:
        for action in value:
            if len(action) > 256 or not _ACTION.match(action):
                raise ValueError(f"action {action!r} must look like 'user.login' or 'invoice.*'")
        return value


class StreamFields(BaseModel):
    """What a tenant admin may set on a destination (every field optional for PUT)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=128)
    url: str | None = Field(None, max_length=2048)
    secret: str | None = Field(
        None,
        min_length=8,
        max_length=1024,
        description="webhook signing secret / Splunk HEC token / Datadog API key; never returned",
    )
    filters: StreamFilter | None = None
    batch_size: int | None = Field(None, ge=1, le=1000)
    enabled: bool | None = None
    # Splunk HEC / Datadog presentation fields (optional).
    index: str | None = Field(None, max_length=128, description="Splunk index")
    sourcetype: str | None = Field(None, max_length=128, description="Splunk sourcetype")
    service: str | None = Field(None, max_length=128, description="Datadog service")
    tags: list[str] | None = Field(None, max_length=32, description="Datadog ddtags")
    # S3 (the secret is the secret access key; the url names bucket and prefix).
    access_key_id: str | None = Field(None, max_length=128, description="S3 access key id")
    region: str | None = Field(None, max_length=32, description="S3 region (default us-east-1)")

    @field_validator("access_key_id")
    @classmethod
    def _access_key_id(cls, value: str | None) -> str | None:
        if value is not None and not _ACCESS_KEY_ID.match(value):
            raise ValueError("access_key_id must be 3-128 letters, digits or +/=_-")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.match(value):
            raise ValueError("region must look like 'eu-west-1'")
        return value


class StreamCreate(StreamFields):
    kind: Kind
    name: str = Field(min_length=1, max_length=128)
    start: Literal["now", "beginning"] = Field(
        "now", description="deliver events stored from now on, or the tenant's whole chain"
    )

    @model_validator(mode="after")
    def _secret_required(self) -> StreamCreate:
        if self.secret is None and self.kind != "syslog":
            raise ValueError(f"a {self.kind} destination needs a secret")
        if self.kind == "s3" and self.access_key_id is None:
            # never the deployment's own credentials (environment, instance role)
            raise ValueError("an s3 destination needs access_key_id (and secret)")
        return self


def url_problem(url: str, kind: str, *, allow_private: bool, allow_http: bool) -> str | None:
    """Why ``url`` is no acceptable destination, or None.

    HTTPS only (``allow_http`` for development), ``syslog+tls://host:port`` for
    syslog; hosts that are or resolve to loopback, private, link-local or
    reserved addresses are refused unless ``allow_private`` (a tenant must not
    reach the deployment's own services).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"url is malformed: {exc}"
    if kind == "s3":
        try:
            target = s3_target(url)
        except ValueError as exc:
            return str(exc)
        if target.endpoint is None:
            return None  # AWS S3 itself
        if target.endpoint.startswith("http://") and not allow_http:
            return "url must use s3:// or s3+https://"
        parts = urlsplit(target.endpoint)
    elif kind == "syslog":
        if parts.scheme != SYSLOG_SCHEME or not parts.hostname or not parts.port:
            return f"url must look like {SYSLOG_SCHEME}://host:6514"
    elif parts.scheme not in ("https", "http") or not parts.hostname:
        return "url must be an absolute https:// URL"
    if parts.scheme == "http" and not allow_http:
        return "url must use https"
    if parts.username or parts.password:
        return "url must not carry credentials; use secret"
    if allow_private:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError):  # UnicodeError: a label over 63 characters
        return f"host {parts.hostname!r} does not resolve"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global:
            return f"host {parts.hostname!r} is a non-public address ({ip})"
    return None


class S3Target(BaseModel):
    """Where an s3 destination writes: parsed from its url."""

    bucket: str
    prefix: str
    endpoint: str | None  # None: AWS S3


def s3_target(url: str) -> S3Target:
    """``s3://bucket/prefix`` (AWS) or ``s3+https://host[:port]/bucket/prefix``
    (an S3-compatible endpoint, path-style); ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in S3_SCHEMES:
        raise ValueError(
            "url must look like s3://bucket/prefix or s3+https://host:port/bucket/prefix"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("url must not carry credentials, a query or a fragment; use secret")
    if parts.scheme == "s3":
        bucket, prefix, endpoint = parts.netloc, parts.path.strip("/"), None
    else:
        if not parts.hostname:
            raise ValueError("url must name the endpoint host")
        bucket, _, prefix = parts.path.strip("/").partition("/")
        endpoint = f"{parts.scheme.removeprefix('s3+')}://{parts.netloc}"
    if not _BUCKET.match(bucket):
        raise ValueError(f"bucket {bucket!r} is not a valid S3 bucket name")
    if not _S3_PREFIX.match(prefix) or ".." in prefix.split("/") or "//" in prefix:
        raise ValueError("the key prefix may hold letters, digits and !-_.*'()/= only")
    return S3Target(bucket=bucket, prefix=prefix, endpoint=endpoint)


def stream_view(doc: dict[str, Any]) -> dict[str, Any]:
    """The API view of a stored destination: configuration and status, no secret."""
    out: dict[str, Any] = {
        "id": doc["_id"],
        "tenant": doc["tenant"],
        "kind": doc["kind"],
        "name": doc["name"],
        "url": doc["url"],
        "enabled": doc.get("enabled", True),
        "batch_size": doc.get("batch_size", 100),
        "filters": doc.get("filters") or {"actions": [], "outcomes": []},
        "secret_set": bool(doc.get("secret")),  # syslog: none (TLS server auth)
        "previous_secret_valid_until": _iso(doc.get("previous_secret_until")),
        "position": doc.get("position", 0),
        "delivered": doc.get("delivered", 0),
        "dead_lettered": doc.get("dead_lettered", 0),
        "last_success_at": _iso(doc.get("last_success_at")),
        "last_error": doc.get("last_error"),
        "last_error_at": _iso(doc.get("last_error_at")),
        "created_at": _iso(doc.get("created_at")),
    }
    for key in ("index", "sourcetype", "service", "tags", "access_key_id", "region"):
        if doc.get(key) is not None:
            out[key] = doc[key]
    return out


def _iso(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text: str = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def matches(filters: dict[str, Any] | None, doc: dict[str, Any]) -> bool:
    """Whether a stored event passes a destination's filters."""
    if not filters or doc.get("action") in CONTROL_ACTIONS:
        return True
    actions = filters.get("actions") or []
    action = str(doc.get("action", ""))
    if actions and not any(
        action.startswith(a[:-1]) if a.endswith(".*") else action == a for a in actions
    ):
        return False
    outcomes = filters.get("outcomes") or []
    return not outcomes or doc.get("outcome") in outcomes


def streamed_event(doc: dict[str, Any]) -> dict[str, Any]:
    """What a destination receives for one stored event.

    The event as received (corrections are their own ``auditstream.event.corrected``
    events later in the stream), plus ``seq``, ``received_at`` and
    ``idempotency_key`` (= the event id). An erased event is a tombstone: id,
    seq, action, times and the erasure record, never its payload.
    """
    if doc.get("erased"):
        fields: dict[str, Any] = {
            k: doc[k] for k in ("id", "tenant", "action", "occurred_at") if k in doc
        }
        record = dict(doc["erased"])
        fields["erased"] = {**record, "at": _iso(record.get("at")) or record.get("at")}
    else:
        fields = event_fields(doc)
    out: dict[str, Any] = {
        k: (_iso(v) if isinstance(v, datetime) else v) for k, v in fields.items()
    }
    out["seq"] = doc.get("seq")
    out["received_at"] = _iso(doc.get("received_at"))
    out["idempotency_key"] = out.get("id")
    return out


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 (hex) of ``"<timestamp>." + body`` with ``secret``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def verify_signature(
    header: str, body: bytes, secrets: list[str], *, now: float, tolerance: float = 300.0
) -> bool:
    """Receiver side: ``header`` (``t=<ts>,v1=<hex>[,v1=<hex>]``) is valid and fresh.

    Rejects a timestamp more than ``tolerance`` seconds from ``now`` (a replayed
    request); accepts any ``v1`` made with any of ``secrets``.
    """
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    sigs = [v.strip() for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isdigit() or not sigs:
        return False
    ts = int(stamps[0])
    if abs(now - ts) > tolerance:
        return False
    expected = {signature(s, ts, body) for s in secrets}
    return any(hmac.compare_digest(sig, e) for sig in sigs for e in expected)


def new_stream_document(
    tenant: str,
    body: StreamCreate,
    *,
    head_seq: int,
    by: str,
    stream_id: str,
    now: datetime,
    box: StreamSecrets,
) -> dict[str, Any]:
    """The stored document of a new destination (API and CLI alike).

    ``head_seq``: the tenant's last stored seq; ``start="now"`` begins after it.
    The secret is stored encrypted by ``box`` (SecretKeyError without a key).
    """
    doc: dict[str, Any] = {
        "_id": stream_id,
        "tenant": tenant,
        "kind": body.kind,
        "name": body.name,
        "url": body.url or (DATADOG_DEFAULT_URL if body.kind == "datadog" else None),
        "secret": None if body.secret is None else box.seal(body.secret),
        "enabled": True if body.enabled is None else body.enabled,
        "batch_size": body.batch_size or 100,
        "filters": body.filters.model_dump() if body.filters else None,
        "position": 0 if body.start == "beginning" else head_seq,
        "delivered": 0,
        "dead_lettered": 0,
        "created_at": now,
        "created_by": by,
    }
    for key in ("index", "sourcetype", "service", "tags", "access_key_id", "region"):
        if getattr(body, key) is not None:
            doc[key] = getattr(body, key)
    return doc


def stream_changes(
    doc: dict[str, Any],
    body: StreamFields,
    *,
    overlap_seconds: int,
    now: datetime,
    box: StreamSecrets,
) -> dict[str, Any]:
    """The ``$set`` of an update: only the fields ``body`` names.

    A new secret keeps the previous one valid (signing) ``overlap_seconds`` longer.
    Secrets are stored encrypted by ``box``; any update also rewrites a secret
    stored in plain (before encryption) or under a retired key.
    """
    changes: dict[str, Any] = {
        k: v
        for k, v in body.model_dump(exclude_unset=True).items()
        if v is not None and k != "secret"
    }
    if box.can_seal:
        changes.update(box.migration(doc))
    if body.secret is not None:
        try:
            old = box.open(doc.get("secret"))
        except SecretKeyError:  # under a lost key: replaced, nothing left to sign with
            old = None
        if body.secret != old:
            changes["secret"] = box.seal(body.secret)
            changes["previous_secret"] = None if old is None else box.seal(old)
            changes["previous_secret_until"] = now + timedelta(seconds=overlap_seconds)
    return changes


class StreamChangedConcurrently(Exception):
    """A destination changed under every attempt to save a change of it."""


async def save_stream_changes(
    collection: Any,
    where: dict[str, Any],
    body: StreamFields,
    *,
    overlap_seconds: int,
    box: StreamSecrets,
    attempts: int = 100,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Apply ``body`` to the destination matching ``where`` (API and CLI alike):
    (the document just before this change, the document it saved), or None when
    there is no such destination.

    The changes are computed from the document read (a rotation keeps the secret it
    replaces valid for the overlap): they are saved only while its ``revision`` (each
    change adds one) and secrets are unchanged, else computed again, so two changes
    at once apply as one after the other does: two rotations chain, and each change's
    pre-image is exactly what it replaced (its audit event's old values). Each failed
    attempt means another writer saved meanwhile. ``collection``: async PyMongo;
    SecretKeyError as :func:`stream_changes`.
    """
    from pymongo import ReturnDocument

    for _ in range(attempts):
        doc: dict[str, Any] | None = await collection.find_one(where)
        if doc is None:
            return None
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as BSON stores it
        changes = stream_changes(doc, body, overlap_seconds=overlap_seconds, now=now, box=box)
        if not changes:
            return doc, doc
        unchanged: dict[str, Any] = {name: doc.get(name) for name in SECRET_FIELDS}
        revision = doc.get("revision")
        unchanged["revision"] = {"$exists": False} if revision is None else revision
        changes["revision"] = int(revision or 0) + 1
        saved: dict[str, Any] | None = await collection.find_one_and_update(
            {**where, **unchanged}, {"$set": changes}, return_document=ReturnDocument.AFTER
        )
        if saved is not None:
            return doc, saved
    raise StreamChangedConcurrently("the destination changed concurrently too often; try again")


async def stream_lag(events: Any, tenant: str, position: int) -> tuple[int, float]:
    """(events stored after ``position``, age in seconds of the oldest of them).

    ``events``: the events collection (an async PyMongo collection).
    """
    head = await events.find_one(
        {"tenant": tenant, "seq": {"$exists": True}}, {"seq": 1}, sort=[("seq", -1)]
    )
    lag = max(0, int(head["seq"]) - position) if head else 0
    seconds = 0.0
    if lag:
        first = await events.find_one(
            {"tenant": tenant, "seq": {"$gt": position}}, {"received_at": 1}, sort=[("seq", 1)]
        )
        at = first.get("received_at") if first else None
        if isinstance(at, datetime):
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            seconds = max(0.0, (datetime.now(UTC) - at).total_seconds())
    return lag, round(seconds, 3)


# --- The tenant's limit of destinations (API and CLI alike) ---------------------------

MAX_STREAMS_PER_TENANT = 20
# Each destination holds one of its tenant's MAX_STREAMS_PER_TENANT slots, unique per
# tenant (the index below): concurrent creates cannot exceed the limit (a count before
# the insert let them all through). Destinations stored without a slot (before slots)
# count against the limit too.
SLOT_INDEX_KEYS = [("tenant", 1), ("slot", 1)]
SLOT_INDEX_OPTIONS: dict[str, Any] = {
    "name": "stream_slot",
    "unique": True,
    "partialFilterExpression": {"slot": {"$exists": True}},
}
# A create that lost its slot to another is retried; each retry means another create
# succeeded, so this bound is only reached under that many concurrent creates.
SLOT_ATTEMPTS = 100


class StreamLimitReached(Exception):
    """The tenant already has MAX_STREAMS_PER_TENANT destinations."""

    def __init__(self) -> None:
        super().__init__(f"a tenant has at most {MAX_STREAMS_PER_TENANT} streams")


async def free_slots(collection: Any, tenant: str) -> list[int]:
    """The tenant's free slots (StreamLimitReached when there is none)."""
    present = await collection.find({"tenant": tenant}, {"slot": 1}).to_list(None)
    used = {d.get("slot") for d in present}
    room = MAX_STREAMS_PER_TENANT - len(present)  # unslotted destinations count too
    free = [n for n in range(MAX_STREAMS_PER_TENANT) if n not in used][: max(0, room)]
    if not free:
        raise StreamLimitReached
    return free


async def insert_in_a_slot(collection: Any, doc: dict[str, Any]) -> None:
    """Insert the new destination ``doc`` holding a free slot of its tenant (API and
    CLI alike): the unique index refuses a slot another create took meanwhile, and
    another free one is tried. StreamLimitReached when the tenant is full,
    StreamChangedConcurrently after SLOT_ATTEMPTS lost slots."""
    import secrets as random_slots

    from pymongo import IndexModel
    from pymongo.errors import DuplicateKeyError

    # idempotent; creating a stream is rare
    await collection.create_indexes([IndexModel(SLOT_INDEX_KEYS, **SLOT_INDEX_OPTIONS)])
    for _ in range(SLOT_ATTEMPTS):
        doc["slot"] = random_slots.choice(await free_slots(collection, doc["tenant"]))
        try:
            await collection.insert_one(doc)
        except DuplicateKeyError:
            continue
        return
    raise StreamChangedConcurrently(
        "the tenant's streams changed concurrently too often; try again"
    )


# --- The audit events of destination changes ------------------------------------------

# One event of the tenant per accepted change (named like retention.policy.changed).
DESTINATION_CREATED = "stream.destination.created"
DESTINATION_UPDATED = "stream.destination.updated"
DESTINATION_SECRET_ROTATED = "stream.destination.secret_rotated"
DESTINATION_DELETED = "stream.destination.deleted"
DESTINATION_REDRIVEN = "stream.destination.redriven"
DESTINATION_TARGET = "stream_destination"
REDACTED = "REDACTED"
# the settings a change event shows (never a secret, its hash or its ciphertext)
_AUDITED_FIELDS = (
    "name",
    "url",
    "enabled",
    "batch_size",
    "filters",
    "index",
    "sourcetype",
    "service",
    "tags",
    "access_key_id",
    "region",
)
_CREDENTIAL_KEY = re.compile(
    r"token|key|secret|sig|pass|pwd|auth|cred|session|code|jwt|hmac", re.IGNORECASE
)
_TOKEN_LIKE = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9._~+/=%\-]{16,}$")
_TOKEN_SEGMENT = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9_\-]{20,}$")


def redacted_url(url: str | None) -> str | None:
    """``url`` as an audit event shows it: credentials replaced by ``REDACTED``.

    The userinfo (``user:password@``), the value of each query parameter whose name
    looks like a credential (token, key, secret, sig, pass, auth, code, session, …)
    or whose value looks like a token (16+ characters with letters and digits), a
    path segment that looks like a token (20+ letters/digits/``-_`` with both, as
    Slack's and Discord's webhook URLs carry) and the fragment.
    """
    from urllib.parse import parse_qsl, quote, urlunsplit

    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = f"[{host}]" if ":" in host else host
        netloc = f"{REDACTED}@{host}" + (f":{port}" if port is not None else "")
    path = "/".join(REDACTED if _TOKEN_SEGMENT.match(seg) else seg for seg in parts.path.split("/"))
    query = "&".join(
        f"{quote(k, safe='')}="
        + (REDACTED if _CREDENTIAL_KEY.search(k) or _TOKEN_LIKE.match(v) else quote(v, safe=""))
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, path, query, REDACTED if parts.fragment else ""))


def audited_settings(doc: dict[str, Any]) -> dict[str, Any]:
    """A destination's settings as its change events show them (URL redacted, no
    secret: ``secret_set`` only)."""
    view = stream_view(doc)
    out: dict[str, Any] = {"kind": doc["kind"]}
    for key in _AUDITED_FIELDS:
        if key in view:
            out[key] = view[key]
    out["url"] = redacted_url(out.get("url"))
    filters = out.get("filters") or {}  # as they act: a list left out is empty
    out["filters"] = {k: filters.get(k) or [] for k in ("actions", "outcomes")}
    out["secret_set"] = view["secret_set"]
    return out


def destination_changes(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """What an update changed: ``{field: {old, new}}`` of the audited settings that
    differ (URLs redacted) and whether the secret was rotated (never its value)."""
    old, new = audited_settings(before), audited_settings(after)
    changes = {
        key: {"old": old.get(key), "new": new.get(key)}
        for key in _AUDITED_FIELDS
        if old.get(key) != new.get(key)
    }
    rotated = after.get("previous_secret_until") != before.get("previous_secret_until")
    return changes, rotated


def destination_event(
    doc: dict[str, Any],
    action: str,
    *,
    actor: str,
    service: str,
    metadata: dict[str, Any] | None = None,
    changes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The fields of the tenant's audit event for a change of the destination ``doc``
    (the post-image; a deleted one: the pre-image), validated by AuditEvent."""
    crud = {DESTINATION_CREATED: "c", DESTINATION_DELETED: "d"}.get(action, "u")
    return {
        "tenant": doc["tenant"],
        "action": action,
        "crud": crud,
        "actor": {"id": actor, "type": "admin"},
        "targets": [{"type": DESTINATION_TARGET, "id": doc["_id"], "name": doc["name"]}],
        "source": {"service": service},
        "changes": {
            key: {side: _fitting(key, value) for side, value in change.items()}
            for key, change in (changes or {}).items()
        },
        "metadata": {key: _fitting(key, value) for key, value in (metadata or {}).items()},
    }


# A setting larger than this (32 Datadog tags of 2,500 characters, 100 long action
# filters) is shown by its digest: the event must fit the metadata limit (64 KiB)
# and the event size (MAX_EVENT_BYTES), else the saved change could not be audited.
MAX_AUDITED_SETTING_BYTES = 16 * 1024


def _fitting(key: str, value: Any) -> Any:
    """``value`` of the audited setting ``key`` as the event shows it: itself, or
    ``{"sha256", "bytes"}`` of its canonical JSON when larger than
    MAX_AUDITED_SETTING_BYTES (two values differ exactly when their digests do)."""
    if key not in _AUDITED_FIELDS:
        return value
    raw = canonical_json(value)
    if len(raw) <= MAX_AUDITED_SETTING_BYTES:
        return value
    return {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def update_event(
    before: dict[str, Any], after: dict[str, Any], *, actor: str, service: str
) -> dict[str, Any] | None:
    """The event of an update (``secret_rotated`` when it gave a new secret, else
    ``updated``; metadata: the names changed, ``secret_rotated``, the kind), or None
    when it changed no setting (nothing to audit)."""
    changes, rotated = destination_changes(before, after)
    if not changes and not rotated:
        return None
    names = sorted([*changes, *(["secret"] if rotated else [])])
    return destination_event(
        after,
        DESTINATION_SECRET_ROTATED if rotated else DESTINATION_UPDATED,
        actor=actor,
        service=service,
        metadata={"kind": after["kind"], "changed": names, "secret_rotated": rotated},
        changes=changes,
    )
