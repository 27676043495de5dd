"""Chain verification over MongoDB: ``GET /v1/verify``, the public key, checkpoints.

The walk itself is the core's :func:`audit_events.chain.verify_chain`; this
module feeds it a cursor sorted by ``(seq, _id)`` and the signed checkpoints
from both copies: the ``checkpoints`` collection and the compacted Kafka topic,
which is the authoritative outside copy (a truncated store with truncated
checkpoints is still caught by the topic). The CLI reuses these helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pymongo.asynchronous.collection import AsyncCollection
from quart import Blueprint, Response, g, request

from audit_events.chain import (
    GENESIS,
    Report,
    TrustedKeys,
    checkpoint_keys,
    control_keys,
    first_seq_where,
    key_id,
    load_public_key,
    public_key_of,
    retired_public_keys,
    seq_probes,
    verify_chain,
)
from audit_events.codec import _parse_time
from audit_events.connections import kafka_client_options
from audit_events.kafka_records import UNREADABLE_BATCH_HEADER, tolerate_undecodable_header_names
from audit_events.retention import marker_view, purge_marker
from audit_events.settings import AuditSettings
from audit_events.storage import CHECKPOINTS_COLLECTION, event_key
from audit_events.store_adapter import chain_head
from query_api.auth import read_tenant, require_scope
from query_api.problems import Problem
from query_api.query import single_values
from query_api.read_audit import audit_read
from query_api.state import api_state, current_services, current_settings, current_store
from query_api.store import MongoEventStore

log = logging.getLogger("auditstream.api.verify")
bp = Blueprint("verify", __name__)


async def kafka_checkpoints(
    settings: AuditSettings, timeout: float = 10.0
) -> list[dict[str, Any]] | None:
    """Every checkpoint on the checkpoints topic, or None when Kafka is unreachable."""
    if not settings.kafka_bootstrap:
        return None
    # a batch aiokafka cannot parse (any producer may write the topic) is one record
    # marked unreadable, skipped below, instead of an error out of every fetch
    tolerate_undecodable_header_names()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=int(timeout * 1000),
        **kafka_client_options(settings),
    )
    out: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        topics = await consumer.topics()
        if settings.topic_checkpoints not in topics:
            return out
        parts = consumer.partitions_for_topic(settings.topic_checkpoints) or set()
        tps = [TopicPartition(settings.topic_checkpoints, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Read past the reported end until a fetch comes back empty: Tansu reports
        # the last batch's base offset + 1 as the end, hiding the rest of that batch.
        while True:
            if loop.time() > deadline:
                return None
            fetched = await consumer.getmany(timeout_ms=300)
            for messages in fetched.values():
                for message in messages:
                    if any(name == UNREADABLE_BATCH_HEADER for name, _ in message.headers or ()):
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                        checkpoint = orjson.loads(message.value)
                        if isinstance(checkpoint, dict):  # any producer may write the topic
                            out.append(checkpoint)
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not fetched and not behind:
                return out
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("checkpoints topic unreachable: %s", exc)
        return None
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


async def mongo_checkpoints(
    events: AsyncCollection[dict[str, Any]], tenant: str
) -> list[dict[str, Any]]:
    return await MongoEventStore(events).checkpoints(tenant)  # the data layer's query


def _after(when: datetime) -> Callable[[dict[str, Any]], bool]:
    def pred(doc: dict[str, Any]) -> bool:
        at = doc.get("received_at")
        if not isinstance(at, datetime):
            return False
        return (at if at.tzinfo else at.replace(tzinfo=when.tzinfo)) >= when

    return pred


async def verify_tenant(
    events: AsyncCollection[dict[str, Any]],
    tenant: str,
    checkpoints: list[dict[str, Any]],
    public_key: str | TrustedKeys,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    control_keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> Report:
    """Walk ``tenant``'s stored chain (optionally the slice received in [since, until)).

    With ``control_keys`` (the control-event public keys by key id), every
    control event's proof is checked, and every erasure and correction must be
    backed by an authentic control event in the store (point lookups by id).
    """
    start_seq, prev, end_seq = 1, GENESIS, None
    if since is not None or until is not None:
        projection = {"seq": 1, "hash": 1, "received_at": 1}
        probe, _ = seq_probes(events, tenant, projection)
        head = await chain_head(events, tenant, projection)  # a store capability
        head_seq = int(head["seq"]) if head else 0
        if since is not None:
            start_seq = await first_seq_where(probe, head_seq, _after(since))
            if start_seq > 1:
                before = await probe(start_seq - 1)
                prev = str(before["hash"]) if before else GENESIS
        if until is not None:
            end_seq = await first_seq_where(probe, head_seq, _after(until)) - 1
    # issue 16: events 1..K were purged once archived; the walk starts at K + 1
    # from the marker's hash of K (a signed checkpoint at K must agree with it)
    marker = await purge_marker(events.database, tenant)
    through = int(marker["through_seq"]) if marker else 0
    if marker is not None and start_seq <= through + 1:
        start_seq, prev = through + 1, str(marker["hash"])
    query: dict[str, Any] = {"tenant": tenant, "seq": {"$gte": start_seq}}
    if end_seq is not None:
        query["seq"]["$lte"] = end_seq
    cursor = events.find(query).sort([("seq", 1), ("_id", 1)]).batch_size(1000)
    key = load_public_key(public_key) if isinstance(public_key, str) else public_key
    report = await verify_chain(
        tenant,
        aiter(cursor),
        checkpoints,
        key,
        start_seq=start_seq,
        prev_hash=prev,
        to_end=end_seq is None,
        on_progress=on_progress,
        control_keys=control_keys,
        controls=_lookup(events, tenant),
    )
    if marker is not None:
        report.purged = marker_view(marker)
        signed = {
            c.get("hash")
            for c in checkpoints
            if (c.get("tenant"), c.get("seq")) == (tenant, through)
        }
        if report.ok and signed and signed != {marker["hash"]}:
            report.fail(
                through,
                "rewritten",
                f"the purge marker's hash of seq {through} differs from its signed checkpoint",
            )
    return report


def _lookup(
    events: AsyncCollection[dict[str, Any]], tenant: str
) -> Callable[[str], Awaitable[dict[str, Any] | None]]:
    async def find(event_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await events.find_one({"_id": event_key(tenant, event_id)})
        return doc

    return find


async def known_tenants(
    settings: AuditSettings, events: AsyncCollection[dict[str, Any]]
) -> list[str]:
    """Every tenant with stored events *or* a signed checkpoint (MongoDB or Kafka copy).

    A tenant whose events were all deleted has no events left to list, but its
    checkpoints still name it: verify then reports it ``truncated``.
    """
    names = set(await events.distinct("tenant"))
    names |= set(await events.database[CHECKPOINTS_COLLECTION].distinct("tenant"))
    for cp in await kafka_checkpoints(settings) or ():
        if isinstance(cp.get("tenant"), str):
            names.add(cp["tenant"])
    return sorted(names)


async def gather_checkpoints(
    settings: AuditSettings, events: AsyncCollection[dict[str, Any]], tenant: str
) -> tuple[list[dict[str, Any]], dict[str, int | None]]:
    """Checkpoints of ``tenant`` from MongoDB and Kafka, with a count per source."""
    stored = await mongo_checkpoints(events, tenant)
    from_kafka = await kafka_checkpoints(settings)
    mine = None if from_kafka is None else [c for c in from_kafka if c.get("tenant") == tenant]
    sources = {"mongodb": len(stored), "kafka": None if mine is None else len(mine)}
    return stored + (mine or []), sources


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return _parse_time(raw)
    except ValueError:
        raise Problem(400, f"{name} must be an RFC 3339 time") from None


@bp.get("/v1/verify")
@require_scope("events:read")
async def verify() -> Response:
    """Walk the tenant's chain: content hashes, links, signed checkpoints, truncation."""
    settings = current_settings()
    single_values(request.args, ("tenant", "since", "until"))  # repeated/unknown → 400
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    since, until = _time_arg("since"), _time_arg("until")
    # The chain walk is the core's, over the collection (the CLI shares it).
    events = current_services().events
    checkpoints, sources = await gather_checkpoints(settings, events, tenant)
    keys = checkpoint_keys(settings)  # current + retired, by key id
    report = await verify_tenant(
        events,
        tenant,
        checkpoints,
        keys,
        since=since,
        until=until,
        control_keys=control_keys(settings),
    )
    if not report.ok:  # counted for the verify-failure alert (deploy/prometheus/alerts.yml)
        api_state().metrics.verify_failures.labels(report.reason or "unknown").inc()
        log.warning("verify: %s is bad at seq %s: %s", tenant, report.first_bad_seq, report.reason)
    body = {**report.as_dict(), "checkpoint_sources": sources, **_signed(report, bool(keys))}
    window = {k: request.args[k] for k in ("since", "until") if k in request.args}
    audit_read("verify", tenant, window, report.checked, ok=report.ok, reason=report.reason)
    return Response(orjson.dumps(body), content_type="application/json")


def _signed(report: Report, keyed: bool) -> dict[str, Any]:
    """``signed``: a signed checkpoint covers the chain; otherwise a ``warning`` says
    what an ``ok`` is worth (hashes and links only: truncation goes undetected)."""
    if report.checkpoints > 0 or report.checked == 0:
        return {"signed": report.checkpoints > 0}
    if not keyed:
        why = (
            "chains are not signed: no checkpoint key is configured"
            " (AUDITSTREAM_CHECKPOINT_PUBLIC_KEY)"
        )
    else:
        why = f"no signed checkpoint covers this chain yet ({report.unsigned_tail} unsigned events)"
    return {
        "signed": False,
        "warning": f"{why}; hashes and links were checked, but a truncated or rewritten"
        " store cannot be detected",
    }


@bp.get("/v1/verify/public-key")
async def public_key() -> Response:
    """The Ed25519 public key that signs checkpoints (no token needed: it is public)."""
    settings = current_settings()
    key = public_key_of(settings)
    if key is None:
        raise Problem(404, "no checkpoint key is configured")
    retired = [{"public_key": k, "key_id": key_id(k)} for k in retired_public_keys(settings)]
    body = {"algorithm": "Ed25519", "public_key": key, "key_id": key_id(key), "retired": retired}
    return Response(orjson.dumps(body), content_type="application/json")


@bp.get("/v1/checkpoints")
@require_scope("events:read")
async def checkpoints() -> Response:
    """The tenant's signed checkpoints (for offline verification of an export)."""
    single_values(request.args, ("tenant",))  # repeated/unknown → 400
    tenant = read_tenant(g.principal, request.args.get("tenant"))
    body = {"data": await current_store().checkpoints(tenant)}
    return Response(orjson.dumps(body), content_type="application/json")
