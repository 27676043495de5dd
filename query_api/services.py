"""The clients one API process holds, opened in ``before_serving``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from audit_events.settings import AuditSettings
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION
from query_api.cache import ReadCache
from query_api.publisher import Publisher, ensure_topics


@dataclass
class Services:
    mongo: AsyncMongoClient[dict[str, Any]]
    events: AsyncCollection[dict[str, Any]]
    redis: Redis
    cache: ReadCache
    publisher: Publisher

    @classmethod
    async def open(cls, settings: AuditSettings) -> Services:
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri, serverSelectionTimeoutMS=5000, tz_aware=True
        )
        events = mongo[settings.mongo_db][EVENTS_COLLECTION]
        await events.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
        redis = Redis.from_url(
            settings.redis_url or "", socket_timeout=1.0, socket_connect_timeout=1.0
        )
        await ensure_topics(settings)
        publisher = Publisher(settings)
        await publisher.start()
        return cls(mongo, events, redis, ReadCache(redis, settings.cache_ttl_seconds), publisher)

    async def close(self) -> None:
        await self.publisher.stop()
        await self.redis.aclose()
        await self.mongo.close()
