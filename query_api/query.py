"""Parse list filters into a MongoDB filter — pure, and literal-only.

Every value becomes a string literal or a validated enum/time; parameter names
are whitelisted, so operator injection (``actor[$ne]=x``, ``$where``, dotted
keys) is rejected with 400 before anything reaches MongoDB.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field

from audit_events.codec import (
    ALL_TOKEN,
    action_token,
    actor_token,
    document_to_api,
    target_token,
)
from query_api.problems import Problem

FILTERS = (
    "actor",
    "actor_type",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "crud",
    "source",
    "since",
    "until",
    "q",
)
CONTROL = ("order", "limit", "cursor", "tenant")
ENUMS = {"outcome": ("success", "failure", "denied"), "crud": ("c", "r", "u", "d")}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.\*$")


class ObjectFilters(BaseModel):
    """The list filters within one object (OpenAPI of the query string; parsing is
    :func:`parse_list_query`'s). Every read that filters events extends it."""

    actor: str | None = None
    actor_type: str | None = None
    action: str | None = Field(None, description="Exact, or a prefix like 'invoice.*'")
    outcome: str | None = None
    crud: str | None = None
    source: str | None = None
    since: str | None = Field(None, description="RFC 3339, inclusive")
    until: str | None = Field(None, description="RFC 3339, exclusive")
    q: str | None = Field(
        None, description="Words in description, action, actor and target ids and names"
    )
    tenant: str | None = Field(None, description="Required for multi-tenant tokens")


class EventFilters(ObjectFilters):
    """:class:`ObjectFilters` plus the target: every filter of :data:`FILTERS`."""

    target_type: str | None = None
    target_id: str | None = None


@dataclass(frozen=True)
class ListQuery:
    filters: dict[str, str]
    order: str  # "desc" (newest first) or "asc"
    limit: int
    cursor: tuple[datetime, str] | None

    def normalized(self) -> str:
        """A canonical string of the query, the cache key's input."""
        cur = [self.cursor[0].isoformat(), self.cursor[1]] if self.cursor else None
        body = {"f": self.filters, "o": self.order, "l": self.limit, "c": cur}
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


def parse_time(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Problem(400, f"{name} must be an RFC 3339 time, got {value!r}") from None
    if parsed.tzinfo is None:
        raise Problem(400, f"{name} must include a UTC offset, e.g. 2026-01-01T00:00:00Z")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 falls before year 1 in UTC
        raise Problem(400, f"{name} is outside the years 1-9999 in UTC, got {value!r}") from None


def single_values(args: Any, allowed: tuple[str, ...]) -> dict[str, str]:
    """``args`` (a MultiDict) as ``{name: value}``; unknown or repeated names → 400."""
    out: dict[str, str] = {}
    for name in args:
        values = args.getlist(name)
        if name not in allowed:
            raise Problem(400, f"unknown query parameter {name!r}", allowed=sorted(allowed))
        if len(values) != 1:
            raise Problem(400, f"query parameter {name!r} given {len(values)} times")
        out[name] = values[0]
    return out


def encode_cursor(occurred_at: datetime, event_id: str) -> str:
    raw = orjson.dumps([occurred_at.astimezone(UTC).isoformat(), event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_body(docs: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """``{"data", "next_cursor"}`` of a page read as ``limit + 1`` stored documents."""
    page = docs[:limit]
    nxt = encode_cursor(page[-1]["occurred_at"], page[-1]["_id"]) if len(docs) > limit else None
    return {"data": [document_to_api(d) for d in page], "next_cursor": nxt}


def decode_cursor(value: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        when, event_id = orjson.loads(raw)
        if not isinstance(when, str) or not isinstance(event_id, str):
            raise ValueError
        return datetime.fromisoformat(when).astimezone(UTC), event_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise Problem(400, "cursor is not valid; use next_cursor from a previous page") from None


def parse_list_query(args: Any, extra_allowed: tuple[str, ...] = ()) -> ListQuery:
    values = single_values(args, FILTERS + CONTROL + extra_allowed)
    filters = {k: v for k, v in values.items() if k in FILTERS}
    for name, allowed in ENUMS.items():
        if name in filters and filters[name] not in allowed:
            raise Problem(400, f"{name} must be one of {', '.join(allowed)}")
    for name in ("since", "until"):
        if name in filters:
            filters[name] = parse_time(name, filters[name]).isoformat()
    if (
        "action" in filters
        and filters["action"].endswith("*")
        and not _PREFIX.match(filters["action"])
    ):
        raise Problem(400, "action prefix must look like 'invoice.*'")
    if "q" in filters and not search_words(filters["q"]):
        raise Problem(400, "q must contain at least one letter or digit")
    order = values.get("order", "desc")
    if order not in ("asc", "desc"):
        raise Problem(400, "order must be asc or desc")
    try:
        limit = int(values.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise Problem(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Problem(400, f"limit must be between 1 and {MAX_LIMIT}")
    cursor = decode_cursor(values["cursor"]) if "cursor" in values else None
    return ListQuery(filters, order, limit, cursor)


def search_words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def index_token(query: ListQuery) -> str:
    """The one ``search`` value whose index range (``tenant_search_time``) holds
    every event ``query`` can match (audit_events/storage.py): the target id, else
    the actor, else the exact action, else the first word of ``q``, else
    :data:`~audit_events.codec.ALL_TOKEN`. The other filters are checked after
    the range (query_api/listing.py ``matcher``)."""
    f = query.filters
    if "target_id" in f:
        return target_token(f["target_id"])
    if "actor" in f:
        return actor_token(f["actor"])
    if "action" in f and not f["action"].endswith(".*"):
        return action_token(f["action"])
    if "q" in f:
        return search_words(f["q"])[0]
    return ALL_TOKEN


def mongo_filter(tenant: str, query: ListQuery) -> dict[str, Any]:
    """The MongoDB filter for ``query`` within ``tenant``; every value a literal."""
    f = query.filters
    # Erased events drop out of lists, history and exports (they read as 410).
    out: dict[str, Any] = {"tenant": tenant, "erased": {"$exists": False}}
    simple = {
        "actor": "actor.id",
        "actor_type": "actor.type",
        "outcome": "outcome",
        "crud": "crud",
        "source": "source.service",
    }
    for name, field in simple.items():
        if name in f:
            out[field] = {"$eq": f[name]}
    if "action" in f:
        action = f["action"]
        if action.endswith(".*"):
            out["action"] = {"$regex": "^" + re.escape(action[:-1])}
        else:
            out["action"] = {"$eq": action}
    target: dict[str, Any] = {}
    if "target_type" in f:
        target["type"] = {"$eq": f["target_type"]}
    if "target_id" in f:
        target["id"] = {"$eq": f["target_id"]}
    if target:
        out["targets"] = {"$elemMatch": target}
    time_range: dict[str, Any] = {}
    if "since" in f:
        time_range["$gte"] = datetime.fromisoformat(f["since"])
    if "until" in f:
        time_range["$lt"] = datetime.fromisoformat(f["until"])
    if "q" in f:
        words = search_words(f["q"])
        if words:
            out["search"] = {"$all": words}
    clauses: list[dict[str, Any]] = []
    if time_range:
        clauses.append({"occurred_at": time_range})
    if query.cursor:
        when, last_id = query.cursor
        op = "$lt" if query.order == "desc" else "$gt"
        # The plain bound is implied by the $or; it gives the planner an index range.
        clauses.append({"occurred_at": {op[:3] + "e": when}})
        clauses.append(
            {"$or": [{"occurred_at": {op: when}}, {"occurred_at": when, "_id": {op: last_id}}]}
        )
    if clauses:
        out["$and"] = clauses
    return out


def sort_spec(order: str) -> list[tuple[str, int]]:
    direction = -1 if order == "desc" else 1
    return [("occurred_at", direction), ("_id", direction)]
