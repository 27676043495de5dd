"""Epochs: a topic whose history restarted is archived as a new, separate history.

The embedded broker (Tansu) keeps topics in memory: after a restart the events
topic starts again at offset 0 with only the new events; a recreated topic does
the same on Apache Kafka. Offsets then name other records than the archived
ones. The archiver compares what the archive holds of a partition with the
topic before consuming it (:func:`probe` + :func:`decide`) and whenever the
topic's end falls behind its position. A new epoch starts at the topic's
first offset; older epochs' segments are never touched (they live under
their own ``e<epoch>/`` folder and manifest entries).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_processor.archive.manifest import PartitionState
from stream_processor.archive.segment import record_digest
from stream_processor.offsets import true_end_offsets
from stream_processor.records import Record


@dataclass(frozen=True)
class Start:
    """Where to archive a partition from, in which epoch, and why a new epoch began."""

    epoch: int
    offset: int
    reason: str | None = None  # set when this start opens an epoch

    @property
    def new_epoch(self) -> bool:
        return self.reason is not None


@dataclass(frozen=True)
class TopicView:
    """What the broker says of one partition now."""

    begin: int  # log start offset
    end: int  # next offset after the last record
    digest_at: str | None  # record_digest of the record at the archive's last offset, if readable


def decide(state: PartitionState | None, view: TopicView) -> Start:
    """Continue the archived epoch, or start a new one (pure: unit-tested)."""
    if state is None:
        return Start(0, view.begin, f"the archive of this partition starts at offset {view.begin}")
    nxt, new = state.next_offset, state.epoch + 1
    if view.end < nxt:
        return Start(
            new,
            view.begin,
            f"the topic ends at offset {view.end}, before the archived {nxt} "
            "(a restarted broker or a recreated topic)",
        )
    if view.begin > nxt:
        return Start(
            new,
            view.begin,
            f"the topic starts at offset {view.begin}, after the archived end {nxt}: "
            f"offsets {nxt}..{view.begin - 1} were deleted before they were archived",
        )
    if view.digest_at is not None and view.digest_at != state.last_record:
        return Start(
            new,
            view.begin,
            f"the record at offset {nxt - 1} is not the archived one "
            "(a restarted broker or a recreated topic)",
        )
    return Start(state.epoch, nxt)


def record_of(m: object) -> Record:
    """A :class:`Record` from an aiokafka ``ConsumerRecord`` (timestamp in ms), bytes exact."""
    headers = tuple((str(n), v) for n, v in (getattr(m, "headers", None) or ()))
    return Record(
        topic=m.topic,  # type: ignore[attr-defined]
        partition=m.partition,  # type: ignore[attr-defined]
        offset=m.offset,  # type: ignore[attr-defined]
        timestamp_ms=int(m.timestamp),  # type: ignore[attr-defined]
        key=m.key,  # type: ignore[attr-defined]
        value=m.value,  # type: ignore[attr-defined]
        headers=headers,
    )


async def probe(
    consumer: AIOKafkaConsumer, tp: TopicPartition, state: PartitionState | None
) -> TopicView:
    """Log start, end and the digest of the record at the archive's last offset.

    ``consumer`` must have ``tp`` assigned; its position of ``tp`` is moved.
    """
    begin = int((await consumer.beginning_offsets([tp]))[tp])
    end = (await true_end_offsets(consumer, [tp]))[tp.partition]
    digest = None
    if state is not None and begin <= state.next_offset - 1 < end:
        at = state.next_offset - 1
        consumer.seek(tp, at)
        for _ in range(20):
            fetched = await consumer.getmany(tp, timeout_ms=500)
            found = [m for m in fetched.get(tp, []) if m.offset == at]
            if found:
                digest = record_digest(record_of(found[0]))
                break
            if any(m.offset > at for m in fetched.get(tp, [])):
                break  # the offset was skipped (a marker): nothing to compare
    return TopicView(begin, end, digest)
