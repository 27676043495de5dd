"""The I/O behind Steps 3, 8 and 9: dead-letter records and the Redis invalidator.

Small interfaces (``Invalidator``, ``DeadLetters``) with their real
implementation beside them: :class:`RedisInvalidator` (Step 9,
stream_processor/invalidate.py) and the dead-letter record format that
``app.FaustDeadLetters`` publishes (Steps 3 and 8, stream_processor/pipeline.py).
Unit tests may pass fakes, integration tests use the real servers.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from audit_events.cache_keys import (
    BUMP_SCRIPT,
    generation_keys,
    generation_ttl_seconds,
    new_generation,
)
from audit_events.notify import stored_channel, stored_message
from stream_processor.records import Record


class Invalidator(Protocol):
    async def bump(
        self, documents: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
    ) -> None:
        """Bump the cache generation of every scope ``documents`` touch.

        ``stored``: the documents the batch stored (all but its conflicts), named
        in the announcement to ``?wait=true`` requests; None names no event.
        """


class DeadLetters(Protocol):
    async def send(self, record: Record, reason: str) -> None:
        """Publish ``record`` with ``reason``; returns once the broker acknowledged."""


class RedisInvalidator:
    """Bumps the cache generations of a stored batch (audit_events/cache_keys.py).

    A missing counter (lost in a restart, a flush, an eviction, or expired) is
    created at a fresh random value before the increment, atomically, and every
    bump renews the counter's expiry: counters never repeat a lost value and
    their memory stays bounded.
    """

    def __init__(self, redis: Redis, cache_ttl_seconds: int = 300, *, namespace: str) -> None:
        self._redis = redis
        self._ttl = generation_ttl_seconds(cache_ttl_seconds)
        self._namespace = namespace  # audit_events.cache_keys.cache_namespace(settings)

    async def bump(
        self, documents: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
    ) -> None:
        keys = generation_keys(self._namespace, documents)
        if not keys:
            return
        by_tenant: dict[str, list[dict[str, Any]]] = {doc["tenant"]: [] for doc in documents}
        for doc in stored or ():
            by_tenant.setdefault(doc["tenant"], []).append(doc)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.eval(BUMP_SCRIPT, 1, key, self._ttl, new_generation())
            # ?wait=true requests wake on this (audit_events/notify.py), same round trip,
            # after the bumps: the events it names are stored, their scopes bumped
            for tenant in sorted(by_tenant):
                named = by_tenant[tenant] if stored is not None else None
                pipe.publish(stored_channel(tenant), stored_message(named))
            await pipe.execute()


# --- dead-letter records (helper E, issue 14 item 3) -------------------------

DEFAULT_DLQ_MAX_RECORD_BYTES = 512 * 1024  # AUDITSTREAM_DLQ_MAX_RECORD_BYTES
MAX_DLQ_KEY_BYTES = 256  # a longer key travels (bounded) inside the value only
MAX_DLQ_REASON_CHARS = 2000
MAX_DLQ_HEADERS_BYTES = 8 * 1024
_DLQ_SLACK = 512  # Kafka's per-record framing, and rounding


def dead_letter_key(record: Record) -> bytes | None:
    """The DLQ record's key: the original key (the tenant) unless it is absurdly long."""
    key = record.key
    return key if key is not None and len(key) <= MAX_DLQ_KEY_BYTES else None


def _blob(data: bytes | None, budget: int) -> dict[str, Any] | None:
    """``data`` as base64 (cut to fit ``budget`` characters) with its size and SHA-256."""
    if data is None:
        return None
    keep = max(0, budget) // 4 * 3
    return {
        "base64": base64.b64encode(data[:keep]).decode("ascii"),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "truncated": len(data) > keep,
    }


def _int64_or_none(value: object) -> int | None:
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return None


def dead_letter_value(
    record: Record, reason: str, *, max_bytes: int = DEFAULT_DLQ_MAX_RECORD_BYTES
) -> bytes:
    """The DLQ message body; with :func:`dead_letter_key` it never exceeds ``max_bytes``.

    The original value is base64 (``original``; ``null`` for a tombstone),
    with the size and SHA-256 of the *whole* value; when the whole would not
    fit, ``original`` holds its first bytes and ``original_truncated`` is true.
    The original key and headers are kept the same way (bounded). Format:
    docs/processor.md, "Dead-letter records".
    """
    headers = [
        [name[:256], None if v is None else base64.b64encode(v).decode("ascii")]
        for name, v in record.headers
    ]
    headers_truncated = len(orjson.dumps(headers)) > MAX_DLQ_HEADERS_BYTES
    if headers_truncated:
        headers = []
    key = record.key
    body: dict[str, Any] = {
        "reason": reason[:MAX_DLQ_REASON_CHARS],
        "source": {
            "topic": record.topic[:300],
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": _int64_or_none(record.timestamp_ms),
        },
        "dead_lettered_at": datetime.now(UTC).isoformat(),
        "original": None,
        "original_encoding": "base64",
        "original_size": None,
        "original_sha256": None,
        "original_truncated": False,
        "key": _blob(key, 0) if key is not None else None,
        "headers": headers,
        "headers_truncated": headers_truncated,
    }
    fixed = len(orjson.dumps(body)) + len(dead_letter_key(record) or b"") + _DLQ_SLACK
    budget = max_bytes - fixed
    if key is not None:  # the key first, at most a tenth of what is left
        body["key"] = _blob(key, min(len(key) * 4 // 3 + 4, budget // 10))
        budget -= len(body["key"]["base64"])
    value = _blob(record.value, budget)
    if value is not None:
        body["original"] = value["base64"]
        body["original_size"] = value["size"]
        body["original_sha256"] = value["sha256"]
        body["original_truncated"] = value["truncated"]
    return orjson.dumps(body)
