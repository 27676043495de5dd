"""Step 4+5: the MongoDB writer and the Redis cache-generation bumper.

Small interfaces (``Store``, ``Invalidator``, ``DeadLetters``); the store is
:class:`stream_processor.chain.ChainedStore`, the others have their real
implementation beside them. Unit tests may pass fakes, integration tests use
the real servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from audit_events.cache_keys import target_generation, tenant_generation
from stream_processor.records import Record

DUPLICATE_KEY = 11000
DUPLICATE_ID_CONFLICT = "duplicate id with different content"


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int
    # Documents (the very objects passed to ``insert``) not stored because their
    # tenant already holds an event with the same id and a different content.
    conflicts: tuple[dict[str, Any], ...] = ()


class Store(Protocol):
    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        """Insert-only write of ``documents``; returns once durable.

        An event whose (tenant, id) is already stored with the same content is a
        duplicate (redelivery: counted, changes nothing); with a different
        content it is a conflict, returned for the caller to dead-letter. Raises
        on any other error; the caller then retries the whole batch, which is
        safe because it is idempotent.
        """


class Invalidator(Protocol):
    async def bump(self, documents: list[dict[str, Any]]) -> None:
        """Bump the cache generation of every scope ``documents`` touch."""


class DeadLetters(Protocol):
    async def send(self, record: Record, reason: str) -> None:
        """Publish ``record`` with ``reason``; returns once the broker acknowledged."""


def is_duplicate_id(error: dict[str, Any]) -> bool:
    """A write error that means "this (tenant, id) is already stored".

    Whether it is a redelivery or a conflict depends on the stored content hash.
    A duplicate key on any *other* unique index is a real conflict and fails the batch.
    """
    if error.get("code") != DUPLICATE_KEY:
        return False
    pattern = error.get("keyPattern")
    if pattern is not None:
        return dict(pattern) == {"_id": 1}
    return " index: _id_ " in str(error.get("errmsg", ""))


def generation_keys(documents: list[dict[str, Any]]) -> list[str]:
    """Every scope generation a stored batch changes: tenant, and tenant+target."""
    keys: set[str] = set()
    for doc in documents:
        tenant = doc["tenant"]
        keys.add(tenant_generation(tenant))
        for target in doc.get("targets", ()):
            keys.add(target_generation(tenant, target["type"], target["id"]))
    return sorted(keys)


class RedisInvalidator:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def bump(self, documents: list[dict[str, Any]]) -> None:
        keys = generation_keys(documents)
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.incr(key)
            await pipe.execute()


def dead_letter_value(record: Record, reason: str) -> bytes:
    """The DLQ message body: original bytes (latin-1 safe), reason and source."""
    return orjson.dumps(
        {
            "reason": reason,
            "source": {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
            },
            "dead_lettered_at": datetime.now(UTC).isoformat(),
            "original": record.value.decode("latin-1"),
            "original_encoding": "latin-1",
        }
    )
