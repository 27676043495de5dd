"""End offsets as they really are, on Tansu and Apache Kafka alike (the broker seam
``exact_end_offsets``, stream_processor/broker.py)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_processor.broker import ANY_BROKER, BrokerCapabilities


async def true_end_offsets(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    broker: BrokerCapabilities = ANY_BROKER,
) -> dict[int, int]:
    """Next offset after the last record of each partition, now.

    With ``broker.exact_end_offsets`` (Apache Kafka) this is what the broker
    reports. Otherwise (Tansu answers ListOffsets(latest) with the last
    *batch's* base offset + 1, so the tail of a multi-record batch would be
    missed), fetch from the reported offset - 1: that returns the whole last
    batch, whose last offset + 1 is the end. On Apache Kafka this reads one
    record per partition and changes nothing. The consumer's positions of
    ``tps`` are moved: seek them afterwards.
    """
    reported = await consumer.end_offsets(tps)
    ends = {tp.partition: int(reported[tp]) for tp in tps}
    if broker.exact_end_offsets:
        return ends
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
