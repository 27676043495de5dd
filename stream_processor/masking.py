"""Masking before the seal: the tenants' rules applied to each decoded event (issue 17).

:class:`MaskedWrite` wraps the write step (Step 5): before the chain writer
seals a batch, every decoded event is replaced by its masked copy
(audit_events/masking.py), so the content hash, the stored document, the
archive's and the streams' copies and every export only ever see the masked
values. Control events (corrections, erasures) are left as the API signed them.

Which rules apply: the version in force at the event's ``received_at`` (its
Kafka record time). Versions are insert-only and take effect
``AUDITSTREAM_MASKING_DELAY_SECONDS`` after they are saved, so a redelivered
or replayed record is masked exactly as the first pass masked it (same content
hash: duplicates stay duplicates, replays reproduce the chain). Events stored
before a version took effect are not rewritten.

Rules are cached per tenant for ``AUDITSTREAM_MASKING_CACHE_SECONDS``; a cache
loaded at time L knows every version effective before L + delay, so an event
received at or after that reloads its tenant first. Loading is I/O and may
fail (the pipeline retries the step); applying is pure and idempotent, so a
retried write masks nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, TypeAdapter

from audit_events.chain import RESERVED_ACTION_PREFIX, event_fields
from audit_events.codec import canonical_json, encode_event
from audit_events.masking import MASKING_COLLECTION, Masker, MaskingRule, as_ms, tenant_key
from audit_events.schema import AuditEvent, Limits, limits_from
from stream_processor.decode import decode
from stream_processor.records import Batch, Record

log = logging.getLogger("auditstream.processor.masking")
# Masking may lengthen a value (a hash is 37 characters): the masked copy of an
# accepted event is not held to the size limits again.
NO_LIMITS = Limits(max_metadata_bytes=2**62, max_metadata_depth=2**30)
Step = Callable[[Batch], Awaitable[None]]
# tenants -> their stored versions (any order)
Load = Callable[[list[str]], Awaitable[list[dict[str, Any]]]]


@dataclass
class TenantRules:
    loaded_at_ms: int
    versions: list[tuple[int, Masker]]  # (effective_at ms, masker), oldest first

    def at(self, received_ms: int) -> Masker | None:
        current = None
        for effective_ms, masker in self.versions:
            if effective_ms > received_ms:
                break
            current = masker
        return current if current else None


class RuleCache:
    """The tenants' rule versions, cached; see the module docstring."""

    def __init__(
        self,
        load: Load,
        secret: bytes | None,
        *,
        cache_seconds: float,
        delay_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._secret = secret
        self._cache_ms = int(cache_seconds * 1000)
        self._delay_ms = int(delay_seconds * 1000)
        self._clock = clock
        self._tenants: dict[str, TenantRules] = {}
        self._warned_no_secret = False

    async def refresh(self, newest: dict[str, int]) -> None:
        """Make sure the rules of every tenant in ``newest`` (tenant -> newest received
        ms of its events) cover those events."""
        now_ms = int(self._clock() * 1000)
        stale = [
            tenant
            for tenant, received_ms in newest.items()
            if (cached := self._tenants.get(tenant)) is None
            or now_ms - cached.loaded_at_ms >= self._cache_ms
            or received_ms >= cached.loaded_at_ms + self._delay_ms
        ]
        if not stale:
            return
        docs = await self._load(stale)  # raises on a store outage: the step is retried
        by_tenant: dict[str, list[dict[str, Any]]] = {t: [] for t in stale}
        for doc in docs:
            by_tenant.setdefault(str(doc["tenant"]), []).append(doc)
        for tenant in stale:
            self._tenants[tenant] = self._compile(tenant, by_tenant[tenant], now_ms)

    def _compile(self, tenant: str, docs: list[dict[str, Any]], now_ms: int) -> TenantRules:
        key = tenant_key(self._secret, tenant) if self._secret is not None else None
        versions = []
        for doc in sorted(docs, key=lambda d: int(d["version"])):
            rules = [MaskingRule.model_validate(r) for r in doc.get("rules") or []]
            if (
                key is None
                and not self._warned_no_secret
                and any(r.action == "hash" for r in rules)
            ):
                log.warning("AUDITSTREAM_MASKING_SECRET is not set: `hash` rules redact instead")
                self._warned_no_secret = True
            versions.append((as_ms(doc["effective_at"]), Masker(rules, key)))
        versions.sort(key=lambda v: v[0])
        return TenantRules(now_ms, versions)

    def masker(self, tenant: str, received_ms: int) -> Masker | None:
        cached = self._tenants.get(tenant)
        return None if cached is None else cached.at(received_ms)

    def mask(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """``docs`` masked (pure; call :meth:`refresh` for their tenants first)."""
        out = []
        for doc in docs:
            masker = None
            if not str(doc.get("action", "")).startswith(RESERVED_ACTION_PREFIX):
                masker = self.masker(str(doc["tenant"]), as_ms(doc["received_at"]))
            new = doc if masker is None else masker.apply(doc)
            if new is not doc and "content_hash" in new:
                # decode hashed the original: the chain must hash what is stored
                new["content_hash"] = content_hash_of(new)
            out.append(new)
        return out


_TIME: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def content_hash_of(doc: dict[str, Any]) -> str:
    """The content hash of a decoded document (what ``document_content_hash`` gives,
    without validating the event again): SHA-256 of the canonical JSON of its fields,
    ``occurred_at`` serialised as the schema serialises it."""
    wire = event_fields(doc)
    when = wire.get("occurred_at")
    if isinstance(when, datetime):
        wire["occurred_at"] = _TIME.dump_python(when, mode="json")
    return hashlib.sha256(canonical_json(wire)).hexdigest()


def newest_received(docs: Iterable[dict[str, Any]]) -> dict[str, int]:
    newest: dict[str, int] = {}
    for doc in docs:
        tenant, ms = str(doc["tenant"]), as_ms(doc["received_at"])
        if ms > newest.get(tenant, -1):
            newest[tenant] = ms
    return newest


class MaskedWrite:
    """Step 5 with the tenants' masking rules applied first (before the seal)."""

    def __init__(self, write: Step, rules: RuleCache) -> None:
        self._write = write
        self._rules = rules

    async def __call__(self, batch: Batch) -> None:
        await self._rules.refresh(newest_received(batch.documents))
        masked = self._rules.mask(batch.documents)
        batch.accepted = [
            (record, doc) for (record, _), doc in zip(batch.accepted, masked, strict=True)
        ]
        await self._write(batch)


class RecordMasker:
    """Masks the values of events-topic records as the processor would store them, for
    the archive (so its copy holds no original either).

    A record whose event some rule changes is written again: the processor's decode
    (same id and ``occurred_at`` it would derive), the masked fields, canonical JSON.
    Replaying the masked copy stores the same document, content hash and chain as
    the live run did (masking is idempotent). Every other record (no rules, control
    events, records the processor dead-letters) keeps its bytes exactly.
    """

    def __init__(
        self,
        rules: RuleCache,
        topic: str,
        limits: Limits,
        max_bytes: int,
        *,
        tenant_keys_only: bool = True,
    ) -> None:
        self._rules = rules
        self._topic = topic
        self._limits = limits
        self._max_bytes = max_bytes
        self._tenant_keys_only = tenant_keys_only

    async def __call__(self, records: list[Record]) -> list[Record]:
        decoded: list[tuple[Record, dict[str, Any] | None]] = []
        for record in records:
            doc = None
            if record.topic == self._topic:
                result = decode(
                    record, self._limits, self._max_bytes, tenant_keys_only=self._tenant_keys_only
                )
                doc = None if isinstance(result, str) else result
            decoded.append((record, doc))
        docs = [doc for _, doc in decoded if doc is not None]
        if not docs:
            return records
        await self._rules.refresh(newest_received(docs))
        masked = iter(self._rules.mask(docs))
        out = []
        for record, doc in decoded:
            if doc is None:
                out.append(record)
                continue
            new = next(masked)
            if new is doc:
                out.append(record)
            else:
                event = AuditEvent.model_validate(event_fields(new), context={"limits": NO_LIMITS})
                out.append(replace(record, value=encode_event(event)))
        return out


def rule_cache(database: Any, settings: Any) -> RuleCache:
    """The tenants' rules stored in ``database`` (the events' database), cached."""
    collection = database[MASKING_COLLECTION]

    async def load(tenants: list[str]) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = await collection.find({"tenant": {"$in": tenants}}).to_list(
            None
        )
        return docs

    secret = settings.masking_secret
    return RuleCache(
        load,
        secret.get_secret_value().encode() if secret is not None else None,
        cache_seconds=settings.masking_cache_seconds,
        delay_seconds=settings.masking_delay_seconds,
    )


def masked_write(write: Step, database: Any, settings: Any) -> MaskedWrite:
    """``write`` masking with the rules stored in ``database`` (the events' database)."""
    return MaskedWrite(write, rule_cache(database, settings))


def record_masker(database: Any, settings: Any) -> RecordMasker:
    """The archive's :class:`RecordMasker` for the events topic of ``settings``."""
    return RecordMasker(
        rule_cache(database, settings),
        settings.topic_events,
        limits_from(settings),
        settings.max_event_bytes,
        tenant_keys_only=settings.tenant_keys_only,
    )


# --- The archiver's copy (stream_processor/archive/masking.py ArchiveRules calls this) --

ARCHIVE_LOAD_RETRY_SECONDS = 60.0


async def archived_records(
    masker: RecordMasker | None,
    messages: list[Any],
    record_of: Callable[[Any], Record],
    *,
    retry_seconds: float = ARCHIVE_LOAD_RETRY_SECONDS,
) -> list[tuple[Record, Record, int]]:
    """``(record as in the topic, record to archive, timestamp type)`` per message.

    Loading the rules is retried with backoff for ``retry_seconds``, then the error
    is raised: the archiver stops without committing, and its restart archives the
    records (masked) again; it never archives an unmasked copy instead.
    """
    records = [record_of(m) for m in messages]
    types = [int(getattr(m, "timestamp_type", 0) or 0) for m in messages]
    stored = records
    if masker is not None:
        started, delay = time.monotonic(), 0.2
        while True:
            try:
                stored = await masker(records)
                break
            except Exception as exc:
                if time.monotonic() - started > retry_seconds:
                    raise
                log.warning("masking rules unavailable (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
    return list(zip(records, stored, types, strict=True))
