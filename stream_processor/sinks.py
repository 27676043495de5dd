"""Step 4+5: the MongoDB writer and the Redis cache-generation bumper.

Small interfaces (``Store``, ``Invalidator``, ``DeadLetters``) with the real
implementation beside each; unit tests may pass fakes, integration tests use
the real servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError
from redis.asyncio import Redis

from audit_events.cache_keys import target_generation, tenant_generation
from stream_processor.records import Record

DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class WriteResult:
    inserted: int
    duplicates: int


class Store(Protocol):
    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        """Insert-only write of ``documents``; returns once durable.

        Duplicate ids count as success (redelivery). Raises on any other error;
        the caller then retries the whole batch, which is safe because it is
        idempotent.
        """


class Invalidator(Protocol):
    async def bump(self, documents: list[dict[str, Any]]) -> None:
        """Bump the cache generation of every scope ``documents`` touch."""


class DeadLetters(Protocol):
    async def send(self, record: Record, reason: str) -> None:
        """Publish ``record`` with ``reason``; returns once the broker acknowledged."""


class MongoStore:
    def __init__(self, collection: AsyncCollection[dict[str, Any]]) -> None:
        self._collection = collection

    async def insert(self, documents: list[dict[str, Any]]) -> WriteResult:
        if not documents:
            return WriteResult(0, 0)
        try:
            result = await self._collection.insert_many(documents, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [e for e in errors if not is_duplicate_id(e)]
            if others or exc.details.get("writeConcernErrors"):
                raise
            return WriteResult(exc.details.get("nInserted", 0), len(errors))
        return WriteResult(len(result.inserted_ids), 0)


def is_duplicate_id(error: dict[str, Any]) -> bool:
    """A write error that means "this event id is already stored" (a redelivery).

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
