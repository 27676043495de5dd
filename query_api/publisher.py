"""Publishing accepted events to Kafka (acks=all), and topic bootstrap."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings
from audit_events.topic_admin import prepare_topics

log = logging.getLogger("auditstream.api.publisher")


class PublishFailed(Exception):
    """Kafka did not acknowledge every message; the client should retry the request."""


async def ensure_topics(settings: AuditSettings) -> None:
    """Create missing topics from the core's specification, then refuse to start
    (:class:`~audit_events.topic_admin.TopicRetentionError`) when the live events
    topic would delete records."""
    await prepare_topics(settings)


class Publisher:
    def __init__(self, settings: AuditSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=self._settings.kafka_idempotence,
            linger_ms=2,
            request_timeout_ms=10_000,
            max_request_size=max(1_048_576, self._settings.max_event_bytes * 2),
            **kafka_client_options(self._settings),
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(
        self,
        messages: list[tuple[bytes, bytes]],
        timeout: float = 10.0,
        *,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send ``(key, value)`` messages (each with ``headers``) and wait until all
        are acknowledged.

        Raises :class:`PublishFailed` if any was not; since event ids are
        idempotency keys, the client retries the whole request safely.
        """
        if self._producer is None:
            raise PublishFailed("producer not started")
        try:
            topic = self._settings.topic_events
            futures = [
                await self._producer.send(topic, value=v, key=k, headers=headers)
                for k, v in messages
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("publish failed: %r", exc)
            raise PublishFailed(str(exc) or type(exc).__name__) from exc

    async def ping(self, timeout: float = 2.0) -> bool:
        if self._producer is None:
            return False
        try:
            fut = self._producer.client.force_metadata_update()
            return bool(await asyncio.wait_for(fut, timeout))
        except (KafkaError, TimeoutError, OSError):
            return False
