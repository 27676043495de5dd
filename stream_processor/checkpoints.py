"""Signed checkpoints of tenant chain heads, published outside MongoDB.

After a batch is durable, each tenant whose head advanced by at least
``every_events`` since its last checkpoint — or whose last checkpoint is older
than ``every_seconds`` — gets a new one: ``{tenant, seq, hash, time}`` signed
with Ed25519, published to the compacted checkpoints topic (key = tenant,
acks=all) and stored in the ``checkpoints`` collection. The last checkpoint per
tenant is kept in memory per worker (a restart checkpoints at its first batch).
A failed checkpoint is logged and retried with the next batch; it never blocks
ingestion. Checkpoints are only made when a batch arrives, so a tenant's last
events stay an *unsigned tail* until its next batch (see docs/chain.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.chain import sign_checkpoint
from audit_events.codec import canonical_json
from audit_events.settings import AuditSettings

log = logging.getLogger("auditstream.processor.checkpoints")
Publish = Callable[[bytes, bytes], Awaitable[None]]


def checkpoint_id(tenant: str, seq: int) -> str:
    return f"{tenant}:{seq:020d}"


class Checkpointer:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        publish: Publish,
        collection: AsyncCollection[dict[str, Any]],
        *,
        every_events: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._key = key
        self._publish = publish
        self._coll = collection
        self._every_events = every_events
        self._every_seconds = every_seconds
        self._clock = clock
        self._now = now
        self._last: dict[str, tuple[int, float]] = {}

    def due(self, tenant: str, seq: int, now: float) -> bool:
        """Pure policy: has ``tenant``'s head moved enough, or long enough ago?"""
        last_seq, last_at = self._last.get(tenant, (0, -math.inf))
        if seq <= last_seq:
            return False
        return seq - last_seq >= self._every_events or now - last_at >= self._every_seconds

    async def after_batch(self, heads: dict[str, tuple[int, str]]) -> int:
        """Checkpoint the due tenants of a stored batch; returns how many were made."""
        made = 0
        for tenant, (seq, hash_) in sorted(heads.items()):
            now = self._clock()
            if not self.due(tenant, seq, now):
                continue
            cp = sign_checkpoint(self._key, tenant, seq, hash_, self._now())
            try:
                await self._publish(tenant.encode(), canonical_json(cp))
                await self._coll.replace_one({"_id": checkpoint_id(tenant, seq)}, cp, upsert=True)
            except Exception as exc:  # next batch retries; ingestion goes on
                log.warning("checkpoint of %s at seq %d failed: %s", tenant, seq, exc)
                continue
            self._last[tenant] = (seq, now)
            made += 1
        return made


async def ensure_checkpoint_topic(settings: AuditSettings) -> None:
    """Create the compacted checkpoints topic if missing (key = tenant)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        if settings.topic_checkpoints in set(await admin.list_topics()):
            return
        topic = NewTopic(
            settings.topic_checkpoints,
            settings.kafka_partitions,
            settings.kafka_replication,
            topic_configs={"cleanup.policy": "compact"},
        )
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([topic])
    finally:
        await admin.close()
