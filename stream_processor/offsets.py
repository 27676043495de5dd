"""Offsets as they really are: the end of a partition on Tansu and Apache Kafka alike."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition


async def true_end_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[int, int]:
    """Next offset after the last record of each partition, now.

    Tansu answers ListOffsets(latest) with the last *batch's* base offset + 1,
    so the tail of a multi-record batch would be missed. Fetching from that
    offset - 1 returns the whole last batch; its last offset + 1 is the end.
    On Apache Kafka this reads one record per partition and changes nothing.
    The consumer's positions of ``tps`` are moved: seek them afterwards.
    """
    reported = await consumer.end_offsets(tps)
    ends = {tp.partition: int(reported[tp]) for tp in tps}
    for tp in tps:
        if ends[tp.partition] == 0:
            continue
        consumer.seek(tp, ends[tp.partition] - 1)
        for _ in range(20):
            fetched = await consumer.getmany(tp, timeout_ms=500)
            if fetched.get(tp):
                last = max(m.offset for m in fetched[tp])
                ends[tp.partition] = max(ends[tp.partition], last + 1)
                break
    return ends
