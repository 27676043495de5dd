"""The clients one API process holds, opened in ``before_serving``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.monitoring import CommandListener
from redis.asyncio import BlockingConnectionPool, Redis

from audit_events.cache_keys import cache_namespace
from audit_events.connections import redis_tls_options
from audit_events.settings import AuditSettings, mongo_client_options
from audit_events.storage import EVENT_INDEXES, EVENTS_COLLECTION, USERS_COLLECTION
from query_api.cache import HitConnections, ReadCache
from query_api.publisher import Publisher, ensure_topics
from query_api.stored_waits import StoredWaits
from query_api.throttle import LOCKOUTS_COLLECTION, LoginThrottle
from query_api.users import UserStore

REDIS_POOL_SIZE = 64
REDIS_TIMEOUT_SECONDS = 1.0  # a Redis call slower than this reads MongoDB instead
HIT_CONNECTIONS = 32  # the cached hit's own connections (query_api/cache.py HitConnections)


@dataclass
class Services:
    mongo: AsyncMongoClient[dict[str, Any]]
    events: AsyncCollection[dict[str, Any]]
    redis: Redis
    cache: ReadCache
    publisher: Publisher
    users: UserStore
    throttle: LoginThrottle
    waits: StoredWaits | None = None  # ?wait=true wake-ups (query_api/stored_waits.py)
    # Exports read one long cursor: a client whose calls are bounded per round
    # trip (socketTimeoutMS), not by timeoutMS, which PyMongo sends as maxTimeMS
    # and MongoDB counts against the cursor's whole life — an export of
    # millions of events would be cut off mid-stream. A frozen store still
    # fails each batch within mongo_timeout_ms.
    exports: AsyncCollection[dict[str, Any]] | None = None
    export_client: AsyncMongoClient[dict[str, Any]] | None = None

    @classmethod
    async def open(
        cls, settings: AuditSettings, mongo_listeners: Sequence[CommandListener] = ()
    ) -> Services:
        """Connect, create indexes and topics (idempotent), start the producer.

        Topics first: when the events topic would delete records the API refuses
        to start (``TopicRetentionError``) before it opens any client.
        """
        await ensure_topics(settings)
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri,
            **mongo_client_options(settings),  # bounded calls: a frozen store is a 503
            tz_aware=True,
            event_listeners=list(mongo_listeners),
        )
        db = mongo[settings.mongo_db]
        events = db[EVENTS_COLLECTION]
        export_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongo_uri,
            **mongo_client_options(settings, operations=False),
            socketTimeoutMS=settings.mongo_timeout_ms,
            tz_aware=True,
            event_listeners=list(mongo_listeners),
        )
        # The same indexes as the processor (audit_events/storage.py): every list
        # filter's store query reads one of them.
        await events.create_indexes([IndexModel(keys, name=name) for name, keys in EVENT_INDEXES])
        # A bounded, blocking pool: a burst waits briefly for a connection instead
        # of failing with "too many connections" (and needlessly bypassing the cache).
        pool = BlockingConnectionPool.from_url(
            settings.redis_url or "",
            max_connections=REDIS_POOL_SIZE,
            timeout=5.0,  # waiting for a pooled connection, not for Redis itself
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            **redis_tls_options(settings),
        )
        redis = Redis.from_pool(pool)  # owns the pool: aclose() closes it
        publisher = Publisher(settings)
        await publisher.start()
        throttle = LoginThrottle(
            redis,
            max_per_user=settings.login_max_failures_per_user,
            max_per_ip=settings.login_max_failures_per_ip,
            window_seconds=settings.login_window_seconds,
            lockouts=db[LOCKOUTS_COLLECTION],  # lockouts outlive a Redis restart
            namespace=cache_namespace(settings),
        )
        await throttle.create_indexes()
        waits = StoredWaits(redis)
        waits.start()
        return cls(
            mongo,
            events,
            redis,
            ReadCache(
                redis,
                settings.cache_ttl_seconds,
                namespace=cache_namespace(settings),
                # A hit's one command skips redis-py's pool and per-command machinery.
                hit_connections=HitConnections(
                    pool, HIT_CONNECTIONS, timeout=REDIS_TIMEOUT_SECONDS, wait_seconds=5.0
                ),
            ),
            publisher,
            UserStore(db[USERS_COLLECTION]),
            throttle,
            waits,
            export_client[settings.mongo_db][EVENTS_COLLECTION],
            export_client,
        )

    async def close(self) -> None:
        if self.waits is not None:
            await self.waits.stop()
        await self.publisher.stop()
        await self.cache.aclose()
        await self.redis.aclose()
        await self.mongo.close()
        if self.export_client is not None:
            await self.export_client.close()
