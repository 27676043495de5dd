"""``/v1/events/export``: a filtered query streamed as CSV or NDJSON in constant memory.

The response body is an async generator over the store's export cursor
(``EventStore.export``: one index range, read in batches; on SecantusDB, which
materialises a range before its first batch, consecutive windows of about
``listing.WINDOW_EVENTS`` events): at most one cursor batch (SecantusDB: one
window, server-side) and one output chunk are held at a time, however many events
match. The
cursor comes from a client bounded per round trip rather than by ``timeoutMS``
(see ``Services.exports``): MongoDB would count the ``maxTimeMS`` PyMongo
derives from it against the whole cursor and cut a long export off. Nothing
is cached. Validation and authorisation happen before the first byte, so
errors are still ``application/problem+json``; a failure after streaming began
aborts the connection (the chunked body never terminates), so a
truncated export cannot be mistaken for a complete one.

Erased events are left out unless ``include_erased=true``: then each one is a
tombstone in its place in the sort order — ``id``, ``tenant``, ``seq``,
``action``, ``received_at``, ``content_hash``, ``hash`` and the ``erased``
record (who, when, why, and the erasing event's id), no payload — so an NDJSON
export of a whole chain verifies offline (``producers/verify_offline.py``).
CSV exports then get an ``erased`` column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import Field
from quart import Blueprint, Response, g, request
from quart_schema import document_querystring

from audit_events.codec import document_to_api
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import FILTERS, EventFilters, parse_list_query, single_values
from query_api.read_audit import audited_export
from query_api.retention import horizon_headers
from query_api.state import current_store

bp = Blueprint("export", __name__)

EXPORT_PARAMS = (*FILTERS, "order", "tenant", "format", "include_erased")
# What a tombstone keeps in an export: enough to chain, nothing of the payload
# (``action`` stays in the store too; the offline verifier uses it to tell an
# erased correction from the erased event itself; the link covers ``received_at``).
TOMBSTONE_FIELDS = (
    "id",
    "tenant",
    "seq",
    "action",
    "received_at",
    "content_hash",
    "hash",
    "erased",
)
CURSOR_BATCH = 1000
CHUNK_ROWS = 500
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}

# Cells starting with these are formulas (or become one) in Excel, LibreOffice and
# Google Sheets; OWASP's advice is to prefix them with a single quote.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "seq",
    "occurred_at",
    "received_at",
    "tenant",
    "action",
    "crud",
    "outcome",
    "actor_id",
    "actor_type",
    "actor_name",
    "target_type",
    "target_id",
    "target_name",
    "targets",
    "description",
    "changes",
    "source_service",
    "source_component",
    "source_version",
    "ip",
    "user_agent",
    "request_id",
    "trace_id",
    "metadata",
    "content_hash",
    "hash",
)


def spreadsheet_safe(cell: str) -> str:
    """``cell`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(FORMULA_TRIGGERS) else cell


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def csv_row(event: dict[str, Any]) -> list[str]:
    """One API-form event as CSV cells in :data:`CSV_COLUMNS` order, spreadsheet-safe.

    Nested values (``targets``, ``changes``, ``metadata``) are compact JSON with
    sorted keys; the first target also gets its own three columns for filtering.
    """
    actor = event.get("actor") or {}
    targets = event.get("targets") or []
    first = targets[0] if targets else {}
    source = event.get("source") or {}
    context = event.get("context") or {}
    values: dict[str, Any] = {
        "id": event.get("id"),
        "seq": event.get("seq"),
        "occurred_at": event.get("occurred_at"),
        "received_at": event.get("received_at"),
        "tenant": event.get("tenant"),
        "action": event.get("action"),
        "crud": event.get("crud"),
        "outcome": event.get("outcome"),
        "actor_id": actor.get("id"),
        "actor_type": actor.get("type"),
        "actor_name": actor.get("name"),
        "target_type": first.get("type"),
        "target_id": first.get("id"),
        "target_name": first.get("name"),
        "targets": targets or None,
        "description": event.get("description"),
        "changes": event.get("changes") or None,
        "source_service": source.get("service"),
        "source_component": source.get("component"),
        "source_version": source.get("version"),
        "ip": context.get("ip"),
        "user_agent": context.get("user_agent"),
        "request_id": context.get("request_id"),
        "trace_id": context.get("trace_id"),
        "metadata": event.get("metadata") or None,
        "content_hash": event.get("content_hash"),
        "hash": event.get("hash"),
    }
    return [spreadsheet_safe(_cell(values[name])) for name in CSV_COLUMNS]


class CsvChunker:
    """Accumulates CSV rows and hands them out as byte chunks (RFC 4180, CRLF).

    ``erased_column``: a last ``erased`` column (the erasure record as JSON).
    """

    def __init__(self, erased_column: bool = False) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")
        self._erased = erased_column

    def header(self) -> None:
        self._writer.writerow((*CSV_COLUMNS, "erased") if self._erased else CSV_COLUMNS)

    def add(self, event: dict[str, Any]) -> None:
        row = csv_row(event)
        if self._erased:
            row.append(spreadsheet_safe(_cell(event.get("erased"))))
        self._writer.writerow(row)

    def take(self) -> bytes:
        data = self._buffer.getvalue().encode()
        self._buffer.seek(0)
        self._buffer.truncate()
        return data


def tombstone(view: dict[str, Any]) -> dict[str, Any]:
    """The export form of an erased event's API view (:data:`TOMBSTONE_FIELDS` only)."""
    return {k: view[k] for k in TOMBSTONE_FIELDS if k in view}


def export_view(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document as exported: its API view, or a tombstone when erased."""
    view = document_to_api(doc)
    return tombstone(view) if doc.get("erased") else view


def ndjson_line(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event) + b"\n"


async def stream_export(
    docs: AsyncIterator[dict[str, Any]],
    fmt: str,
    to_api: Callable[[dict[str, Any]], dict[str, Any]] = export_view,
    chunk_rows: int = CHUNK_ROWS,
    erased_column: bool = False,
) -> AsyncIterator[bytes]:
    """Yield the export of ``docs`` in chunks of ``chunk_rows`` events; closes ``docs``
    (a store cursor) however the response ends."""
    rows = 0
    try:
        if fmt == "csv":
            chunker = CsvChunker(erased_column)
            chunker.header()
            async for doc in docs:
                chunker.add(to_api(doc))
                rows += 1
                if rows % chunk_rows == 0:
                    yield chunker.take()
            yield chunker.take()
        else:
            parts: list[bytes] = []
            async for doc in docs:
                parts.append(ndjson_line(to_api(doc)))
                if len(parts) == chunk_rows:
                    yield b"".join(parts)
                    parts.clear()
            if parts:
                yield b"".join(parts)
    finally:
        close = getattr(docs, "aclose", None)
        if close is not None:
            await close()


class ExportArgs(EventFilters):
    format: str = Field("csv", description="csv (default) or ndjson")
    order: str | None = Field(None, description="desc (default, newest first) or asc")
    include_erased: str | None = Field(
        None,
        description="true: erased events as tombstones (id, tenant, seq, action, received_at, "
        "content_hash, hash, erased; no payload), so an NDJSON export of a whole chain "
        "verifies offline",
    )


@bp.get("/v1/events/export")
@document_querystring(ExportArgs)
@require_scope("events:read")
async def export_events() -> Response:
    """Every event matching the list filters, streamed as CSV or NDJSON."""
    values = single_values(request.args, EXPORT_PARAMS)
    fmt = values.pop("format", "csv")
    if fmt not in MEDIA_TYPES:
        raise Problem(400, "format must be csv or ndjson")
    include_erased = values.pop("include_erased", "false")
    if include_erased not in ("true", "false"):
        raise Problem(400, "include_erased must be true or false")
    query = parse_list_query(request.args, extra_allowed=("format", "include_erased"))
    tenant = read_tenant(g.principal, values.get("tenant"))
    # Tombstones too with include_erased (export_view strips them to the chain fields).
    docs = current_store().export(tenant, query, include_erased == "true")
    erased = include_erased == "true"
    docs = audited_export(docs, tenant, query.filters, format=fmt, include_erased=erased)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = stream_export(docs, fmt, erased_column=include_erased == "true")
    resp = Response(body, content_type=MEDIA_TYPES[fmt])
    resp.headers["Content-Disposition"] = (
        f'attachment; filename="auditstream-{tenant}-{stamp}.{fmt}"'
    )
    resp.headers["Cache-Control"] = "no-store"
    resp.headers.update(await horizon_headers(tenant))  # issue 16: results end at the purge
    resp.timeout = None  # an export of millions of events takes longer than RESPONSE_TIMEOUT
    return resp
