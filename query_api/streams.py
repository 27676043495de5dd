"""``/v1/streams``: a tenant's outbound log-stream destinations (issue 17).

Destinations live in MongoDB (``streams``); the stream worker
(``auditstream streamer``) delivers from them. Secrets (webhook signing
secret, Splunk HEC token, Datadog API key, S3 secret access key) are written,
never read back: GET shows ``secret_set`` only. They are stored encrypted with
AUDITSTREAM_STREAMS_SECRET_KEY (audit_events/stream_secrets.py); without it the
API answers 503 to a request that would store one. ``PUT`` changes only the fields it names; a new
``secret`` keeps the previous one valid for signing during
AUDITSTREAM_STREAMS_SECRET_OVERLAP_SECONDS (rotation).

Each accepted change is published as the tenant's audit event
(``stream.destination.created|updated|secret_rotated|deleted``, actor = the
token's subject, target = the destination; never a secret nor a URL's
credentials); ``audited`` in the answer (``X-Audited`` on a DELETE) says whether
Kafka took it. A refused change publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.collection import AsyncCollection
from quart import Blueprint, Response, g
from quart_schema import document_request, document_response

from audit_events.stream_secrets import SecretKeyError, StreamSecrets
from audit_events.streams import (
    DATADOG_DEFAULT_URL,
    DESTINATION_CREATED,
    DESTINATION_DELETED,
    STREAM_DEAD_LETTERS_COLLECTION,
    STREAMS_COLLECTION,
    StreamChangedConcurrently,
    StreamCreate,
    StreamFields,
    StreamLimitReached,
    audited_settings,
    destination_event,
    free_slots,
    insert_in_a_slot,
    new_stream_document,
    save_stream_changes,
    stream_lag,
    stream_view,
    update_event,
    url_problem,
)
from query_api.admin_requests import json_response, publish_event, read_body, tenant_arg
from query_api.auth import require_scope
from query_api.problems import Problem
from query_api.state import current_services, current_settings

bp = Blueprint("streams", __name__)
log = logging.getLogger(__name__)
SERVICE = "auditstream-api"  # the source of the change events


class StreamStatus(BaseModel):
    """A destination: configuration (no secret), position and health."""

    id: str
    tenant: str
    kind: str
    name: str
    url: str
    enabled: bool
    batch_size: int
    filters: dict[str, Any]
    secret_set: bool
    position: int
    delivered: int
    dead_lettered: int
    last_success_at: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    lag_events: int | None = None
    lag_seconds: float | None = None
    dead_letter_batches: int | None = None
    audited: bool | None = Field(
        None,
        description="POST/PUT: whether the change's audit event was published (null: "
        "the PUT changed nothing, no event)",
    )


class StreamList(BaseModel):
    data: list[StreamStatus]


def _collections() -> tuple[
    AsyncCollection[dict[str, Any]],
    AsyncCollection[dict[str, Any]],
    AsyncCollection[dict[str, Any]],
]:
    services = current_services()
    db = services.mongo[current_settings().mongo_db]
    return db[STREAMS_COLLECTION], db[STREAM_DEAD_LETTERS_COLLECTION], services.events


async def _check_url(url: str, kind: str) -> None:
    settings = current_settings()
    problem = await asyncio.to_thread(
        url_problem,
        url,
        kind,
        allow_private=settings.streams_allow_private_hosts,
        allow_http=settings.streams_allow_http,
    )
    if problem:
        raise Problem(422, problem, errors=[{"loc": "url", "msg": problem}])


async def _head_seq(events: AsyncCollection[dict[str, Any]], tenant: str) -> int:
    head = await events.find_one(
        {"tenant": tenant, "seq": {"$exists": True}}, {"seq": 1}, sort=[("seq", -1)]
    )
    return int(head["seq"]) if head else 0


async def _status(doc: dict[str, Any]) -> dict[str, Any]:
    """The view plus lag: events stored after the position, age of the oldest of them."""
    _, dead, events = _collections()
    view = stream_view(doc)
    lag, seconds = await stream_lag(events, doc["tenant"], int(doc.get("position", 0)))
    view["lag_events"], view["lag_seconds"] = lag, seconds
    view["dead_letter_batches"] = await dead.count_documents({"stream_id": doc["_id"]})
    return view


async def _find(stream_id: str, tenant: str) -> dict[str, Any]:
    streams, _, _ = _collections()
    doc = await streams.find_one({"_id": stream_id, "tenant": tenant})
    if doc is None:
        raise Problem(404, f"no stream {stream_id!r}")
    return doc


@contextlib.contextmanager
def _secret_errors() -> Iterator[None]:
    """Secrets are stored encrypted only: no key (or a wrong one) is the server's 503."""
    try:
        yield
    except SecretKeyError as exc:
        log.error("streams: %s", exc)
        raise Problem(503, "destination secrets cannot be stored or read on this server") from None


@bp.post("/v1/streams")
@document_request(StreamCreate)
@document_response(StreamStatus, 201)
@require_scope("events:admin")
async def create_stream() -> Response:
    """Add a destination for the tenant's events (webhook, Splunk HEC, Datadog, syslog/TLS, S3)."""
    tenant = tenant_arg()
    body = await read_body(StreamCreate, shape="", invalid="invalid stream")
    assert isinstance(body, StreamCreate)
    url = body.url or (DATADOG_DEFAULT_URL if body.kind == "datadog" else None)
    if url is None:
        raise Problem(422, "url is required", errors=[{"loc": "url", "msg": "required"}])
    await _check_url(url, body.kind)
    streams, _, events = _collections()
    with _limit_errors():
        await free_slots(streams, tenant)  # 422 before anything else when the tenant is full
    with _secret_errors():
        doc = new_stream_document(
            tenant,
            body,
            head_seq=await _head_seq(events, tenant),
            by=g.principal.subject,
            stream_id="st_" + secrets.token_hex(12),
            now=datetime.now(UTC),
            box=StreamSecrets.from_settings(current_settings()),
        )
    with _limit_errors():
        await insert_in_a_slot(streams, doc)
    view = await _status(doc)
    view["audited"] = await publish_event(
        destination_event(
            doc,
            DESTINATION_CREATED,
            actor=g.principal.subject,
            service=SERVICE,
            metadata={**audited_settings(doc), "position": doc["position"]},
        )
    )
    return json_response(view, 201)


@contextlib.contextmanager
def _limit_errors() -> Iterator[None]:
    """The tenant's limit (audit_events/streams.py, shared with the CLI): 422; 409
    when every free slot was taken by another create first."""
    try:
        yield
    except StreamLimitReached as exc:
        raise Problem(422, str(exc)) from None
    except StreamChangedConcurrently as exc:
        raise Problem(409, str(exc)) from None


@bp.get("/v1/streams")
@document_response(StreamList)
@require_scope("events:admin")
async def list_streams() -> Response:
    """The tenant's destinations with their position, lag and health."""
    tenant = tenant_arg()
    streams, _, _ = _collections()
    docs = await streams.find({"tenant": tenant}).sort("created_at", 1).to_list(None)
    return json_response({"data": [await _status(d) for d in docs]})


@bp.get("/v1/streams/<stream_id>")
@document_response(StreamStatus)
@require_scope("events:admin")
async def get_stream(stream_id: str) -> Response:
    """One destination: lag (events, seconds), last success, last error; no secret."""
    return json_response(await _status(await _find(stream_id, tenant_arg())))


@bp.put("/v1/streams/<stream_id>")
@document_request(StreamFields)
@document_response(StreamStatus)
@require_scope("events:admin")
async def update_stream(stream_id: str) -> Response:
    """Change the named fields; a new ``secret`` keeps the previous one valid for a while."""
    tenant = tenant_arg()
    doc = await _find(stream_id, tenant)
    body = await read_body(StreamFields, shape="", invalid="invalid stream")
    if body.url is not None:
        await _check_url(body.url, doc["kind"])
    streams, _, _ = _collections()
    try:
        with _secret_errors():
            # answered with what this request saved, not what a concurrent one saved after
            saved = await save_stream_changes(
                streams,
                {"_id": stream_id, "tenant": tenant},
                body,
                overlap_seconds=current_settings().streams_secret_overlap_seconds,
                box=StreamSecrets.from_settings(current_settings()),
            )
    except StreamChangedConcurrently as exc:
        raise Problem(409, str(exc)) from None
    if saved is None:  # deleted meanwhile
        raise Problem(404, f"no stream {stream_id!r}")
    before, after = saved
    view = await _status(after)
    event = update_event(before, after, actor=g.principal.subject, service=SERVICE)
    view["audited"] = None if event is None else await publish_event(event)
    return json_response(view)


@bp.delete("/v1/streams/<stream_id>")
@require_scope("events:admin")
async def delete_stream(stream_id: str) -> Response:
    """Remove a destination and its dead-letter list; the worker stops delivering to it."""
    tenant = tenant_arg()
    streams, dead, _ = _collections()
    # the pre-image: this DELETE removed it (a concurrent one finds nothing: 404)
    deleted = await streams.find_one_and_delete({"_id": stream_id, "tenant": tenant})
    if deleted is None:  # never there, or a concurrent DELETE removed it
        raise Problem(404, f"no stream {stream_id!r}")
    await dead.delete_many({"stream_id": stream_id})
    audited = await publish_event(
        destination_event(
            deleted,
            DESTINATION_DELETED,
            actor=g.principal.subject,
            service=SERVICE,
            metadata=audited_settings(deleted),
        )
    )
    # 204 has no body: the header says whether the change's audit event was published
    return Response(status=204, headers={"X-Audited": "true" if audited else "false"})
