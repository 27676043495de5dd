"""The replay's Kafka source: the events topic read partition by partition, up to an end.

Replay reads outside any consumer group (``group_id=None``, nothing committed):
it assigns every partition of the events topic itself, seeks to its own saved
positions and reads each partition up to end offsets taken at a chosen moment
(:meth:`TopicSource.ends`, through the broker seam
:func:`stream_processor.offsets.true_end_offsets`). It knows nothing of the store
or the swap (stream_processor/replay/rebuild.py, swap.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings
from stream_processor.offsets import true_end_offsets
from stream_processor.records import Record, tolerate_undecodable_header_names

Positions = dict[int, int]  # partition -> next offset to read


class TopicSource:
    """The events topic, every partition assigned to one consumer outside any group."""

    def __init__(self, consumer: AIOKafkaConsumer, topic: str, batch_size: int) -> None:
        self.consumer = consumer  # the archive's epoch probe reads through it too
        self.topic = topic
        self.tps: list[TopicPartition] = []
        self._batch_size = batch_size

    @classmethod
    async def open(cls, settings: AuditSettings, batch_size: int) -> TopicSource:
        """Connect and assign every partition the topic has now (none if it does not exist)."""
        tolerate_undecodable_header_names()  # a header name that is not UTF-8 (records.py)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            enable_auto_commit=False,
            group_id=None,
            **kafka_client_options(settings),
        )
        await consumer.start()
        source = cls(consumer, settings.topic_events, batch_size)
        try:
            await consumer.topics()
            parts = consumer.partitions_for_topic(source.topic) or set()
            source.tps = [TopicPartition(source.topic, p) for p in sorted(parts)]
            consumer.assign(source.tps)
        except BaseException:
            await consumer.stop()
            raise
        return source

    async def close(self) -> None:
        await self.consumer.stop()

    async def beginnings(self) -> Positions:
        """The first offset the broker still holds, per partition."""
        starts = await self.consumer.beginning_offsets(self.tps)
        return {tp.partition: int(starts[tp]) for tp in self.tps}

    async def offsets_at(self, since: datetime) -> Positions:
        """The first offset at or after ``since`` per partition (its end if none)."""
        found = await self.consumer.offsets_for_times(
            {tp: int(since.timestamp() * 1000) for tp in self.tps}
        )
        ends = await self.consumer.end_offsets(self.tps)
        return {
            tp.partition: int(found[tp].offset if found.get(tp) else ends[tp]) for tp in self.tps
        }

    async def ends(self) -> Positions:
        """The next offset after each partition's last record, now (moves the positions)."""
        return await true_end_offsets(self.consumer, self.tps)

    async def extent(self) -> dict[int, tuple[int, int]]:
        """(first offset, end offset) of every partition, as the broker reports them."""
        if not self.tps:
            return {}
        first = await self.consumer.beginning_offsets(self.tps)
        ends = await self.consumer.end_offsets(self.tps)
        return {tp.partition: (int(first[tp]), int(ends[tp])) for tp in self.tps}

    def seek(self, positions: Positions) -> None:
        for tp in self.tps:
            self.consumer.seek(tp, positions[tp.partition])

    async def reached(self, ends: Positions) -> list[int]:
        """The partitions whose read position is at or past their end in ``ends``."""
        return [
            tp.partition
            for tp in self.tps
            if await self.consumer.position(tp) >= ends[tp.partition]
        ]

    async def fetch(self, ends: Positions) -> list[Record]:
        """Up to ``batch_size`` records below ``ends`` (fetches are often small).

        Records at or past a partition's end are dropped: seek back to the
        saved positions before the next catch-up reads them.
        """
        records: list[Record] = []
        timeout = 1000
        while len(records) < self._batch_size:
            fetched = await self.consumer.getmany(
                timeout_ms=timeout, max_records=self._batch_size - len(records)
            )
            if not fetched:
                break
            for tp, messages in fetched.items():
                for m in messages:
                    if m.offset >= ends[tp.partition]:
                        continue  # beyond this catch-up's end: the next one takes it
                    records.append(_record(m))
            timeout = 20  # something arrived: top up only with what is ready
        return records

    def partition_of(self, tenant: str) -> int | None:
        """The partition the producers' default partitioner gives ``tenant`` (its key)."""
        parts = [tp.partition for tp in self.tps]
        if not parts:
            return None
        partition: int = DefaultPartitioner()(tenant.encode(), parts, parts)
        return partition


def _record(m: Any) -> Record:
    return Record(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value or b"")
