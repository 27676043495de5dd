"""The Kafka side of the producer behind a small interface.

:class:`KafkaTransport` is the real implementation (aiokafka); unit tests drive the
producer with a fake that follows the same :class:`Transport` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from audit_events.connections import KAFKA_SECURITY_KEYS
from audit_events.topic_admin import create_missing
from audit_events.topics import TopicSpec, topic_configs
from producers.config import ProducerConfig

log = logging.getLogger("auditstream.producer")

#: A message as it goes to Kafka: (key, value).
Message = tuple[bytes, bytes]


class Transport(Protocol):
    async def connect(self) -> None:
        """Open a connection (and the topic); raise any exception if Kafka is unreachable."""

    async def send(self, messages: Sequence[Message], timeout: float) -> list[tuple[int, int]]:
        """Send ``messages`` in order; return ``(partition, offset)`` of each once acknowledged.

        Raises if any message was not acknowledged within ``timeout`` seconds; some
        may have been written anyway (the caller resends them: ids make that safe).
        """

    async def close(self) -> None:
        """Release the connection; never raises."""


class KafkaTransport:
    def __init__(self, config: ProducerConfig) -> None:
        self._config = config
        self._producer: AIOKafkaProducer | None = None

    async def connect(self) -> None:
        cfg = self._config
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            acks="all",
            enable_idempotence=cfg.idempotence,
            compression_type=cfg.compression,
            linger_ms=cfg.linger_ms,
            max_batch_size=cfg.max_batch_bytes,
            max_request_size=cfg.max_request_bytes,
            request_timeout_ms=cfg.request_timeout_ms,
            **cfg.kafka_options,
        )
        try:
            await producer.start()
            if cfg.create_topic:
                await self._ensure_topic()
        except BaseException:
            await _stop(producer)
            raise
        self._producer = producer

    async def _ensure_topic(self) -> None:
        # Tansu keeps topics in memory: after a broker restart the topic is gone and a
        # produce would auto-create it with the wrong partition count and the broker's
        # default retention. Create it first, from the core's topic specification.
        cfg = self._config
        security = {k: v for k, v in cfg.kafka_options.items() if k in KAFKA_SECURITY_KEYS}
        admin = AIOKafkaAdminClient(
            bootstrap_servers=cfg.bootstrap, request_timeout_ms=cfg.request_timeout_ms, **security
        )
        await admin.start()
        try:
            configs = topic_configs(cfg.replication)
            spec = TopicSpec("events", cfg.topic, cfg.partitions, cfg.replication, configs)
            if await create_missing(admin, [spec]):
                log.info("created topic %s (%d partitions)", cfg.topic, cfg.partitions)
        finally:
            await admin.close()

    async def send(self, messages: Sequence[Message], timeout: float) -> list[tuple[int, int]]:
        producer = self._producer
        if producer is None:
            raise ConnectionError("not connected")
        topic = self._config.topic

        async def run() -> list[tuple[int, int]]:
            futures = [await producer.send(topic, value=v, key=k) for k, v in messages]
            done = await asyncio.gather(*futures)
            return [(md.partition, md.offset) for md in done]

        return await asyncio.wait_for(run(), timeout)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop(producer)


async def _stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 5.0)
    except Exception as exc:  # a dead broker: nothing more to do
        log.debug("closing the Kafka producer: %r", exc)
