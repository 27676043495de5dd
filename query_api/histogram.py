"""``GET /v1/histogram``: how many of the tenant's events match, over time.

The viewer draws it above the results and narrows the time range when a span of
it is dragged. Counts come from one projection-only scan of the matching events
(``occurred_at`` only), at most ``MAX_SCANNED`` of them (``truncated`` says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import orjson
from pydantic import BaseModel, Field
from quart import Blueprint, Response, g, request
from quart_schema import document_response

from audit_events.codec import _iso
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import parse_list_query
from query_api.state import current_store

bp = Blueprint("histogram", __name__)
MAX_SCANNED = 200_000
MAX_BUCKETS = 200


class Histogram(BaseModel):
    since: str | None = Field(description="Start of the first bucket (RFC 3339)")
    until: str | None = Field(description="End of the last bucket, exclusive")
    bucket_seconds: float
    counts: list[int]
    total: int
    truncated: bool = Field(description="More than 200,000 events matched: counts are partial")


@bp.get("/v1/histogram")
@document_response(Histogram)
@require_scope("events:read")
async def histogram() -> Response:
    """Event counts in ``buckets`` (1..200, default 60) equal slices of the time range.

    Takes the list filters (``since``/``until`` bound the range; without them it
    spans the matching events) and ``include_erased`` like ``GET /v1/events``.
    """
    query = parse_list_query(request.args, extra_allowed=("buckets", "include_erased"))
    if query.cursor is not None:
        raise Problem(400, "cursor does not apply to a histogram")
    try:
        buckets = int(request.args.get("buckets", "60"))
    except ValueError:
        raise Problem(400, "buckets must be an integer") from None
    if not 1 <= buckets <= MAX_BUCKETS:
        raise Problem(400, f"buckets must be between 1 and {MAX_BUCKETS}")
    include_erased = request.args.get("include_erased", "false")
    if include_erased not in ("true", "false"):
        raise Problem(400, "include_erased must be true or false")
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    found = await current_store().times(tenant, query, include_erased == "true", MAX_SCANNED + 1)
    times = [_aware(t) for t in found]
    truncated = len(times) > MAX_SCANNED
    times = times[:MAX_SCANNED]
    f = query.filters
    start = datetime.fromisoformat(f["since"]) if "since" in f else min(times, default=None)
    end = datetime.fromisoformat(f["until"]) if "until" in f else None
    if end is None and times:
        end = max(times) + timedelta(seconds=1)
    if start is None or end is None or end <= start:
        body: dict[str, object] = {
            "since": None,
            "until": None,
            "bucket_seconds": 0,
            "counts": [],
            "total": 0,
        }
        return _json({**body, "truncated": truncated})
    width = (end - start).total_seconds() / buckets
    counts = [0] * buckets
    for t in times:
        i = math.floor((t - start).total_seconds() / width)
        if 0 <= i < buckets:
            counts[i] += 1
    body = {
        "since": _iso(start),
        "until": _iso(end),
        "bucket_seconds": width,
        "counts": counts,
        "total": sum(counts),
        "truncated": truncated,
    }
    return _json(body)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _json(body: Mapping[str, object]) -> Response:
    return Response(orjson.dumps(body), content_type="application/json")
