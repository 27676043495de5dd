"""The processor group's lag: events in Kafka that are not stored yet.

``auditstream up`` drains it to 0 before stopping an embedded (in-memory) Kafka,
so nothing that got 202 is lost at Ctrl-C: the events on the topic when the stop
began (:meth:`LagReader.ends`), so producers still publishing straight to Kafka
do not keep the drain going forever. The group's committed offsets are
read without joining the group; the end of each partition is the *true* end
(Tansu reports the last batch's base offset + 1 as the latest offset, see
:func:`stream_processor.replay.true_end_offsets`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_processor.replay import true_end_offsets


class LagReader:
    """Reads ``group``'s lag on ``topic``; ``async with`` opens the two clients."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.topic = topic
        self.probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        # Same group id, never subscribes: only fetches the group's committed offsets.
        self.offsets = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )

    async def __aenter__(self) -> LagReader:
        await self.probe.start()
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.probe.stop()
        await self.offsets.stop()

    async def ends(self) -> dict[int, int]:
        """The true end offset of each partition of the topic ({}: no topic yet)."""
        if self.topic not in await self.probe.topics():
            return {}  # nothing was ever published
        partitions = self.probe.partitions_for_topic(self.topic) or set()
        if not partitions:
            return {}
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.probe.assign(tps)
        return await true_end_offsets(self.probe, tps)

    async def lag(self, upto: dict[int, int] | None = None) -> int:
        """Events on the topic past the group's committed offsets (0: all stored).

        ``upto`` (end offsets from :meth:`ends`, e.g. taken when the stop began)
        counts only the events before them: producers that keep publishing
        straight to Kafka do not keep the lag from ever reaching 0.
        """
        total = 0
        for partition, end in (await self.ends()).items():
            if upto is not None:
                end = min(end, upto.get(partition, 0))
            committed = await self.offsets.committed(TopicPartition(self.topic, partition))
            done = committed if committed is not None and committed >= 0 else 0
            total += max(0, end - done)
        return total


async def lag_readings(
    bootstrap: str, group: str, topic: str, every: float = 0.5
) -> AsyncGenerator[tuple[int | None, str], None]:
    """``(lag, why)`` every ``every`` s until the lag is 0 (then that reading ends it).

    The lag counts the events on the topic when the first reading was taken
    (:meth:`LagReader.ends`). ``lag`` is None, with ``why``, while Kafka does not
    answer; the reader is then opened afresh. Use it inside ``contextlib.aclosing``
    when the caller may stop early (its clients are closed then).
    """
    reader: LagReader | None = None
    target: dict[int, int] | None = None  # what Kafka held when the drain began
    try:
        while True:
            try:
                if reader is None:
                    reader = LagReader(bootstrap, group, topic)
                    await reader.__aenter__()
                if target is None:
                    target = await reader.ends()
                lag, why = await reader.lag(target), ""
            except Exception as exc:  # Kafka unreachable: keep trying, say so
                lag, why = None, f"cannot read the lag yet ({exc.__class__.__name__}: {exc})"
                if reader is not None:  # start afresh next time
                    with contextlib.suppress(Exception):
                        await reader.__aexit__(None, None, None)
                    reader = None
            yield lag, why
            if lag == 0:
                return
            await asyncio.sleep(every)
    finally:
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.__aexit__(None, None, None)
