"""The broker seams (stream_processor/broker.py): what each capability changes.

A fake consumer that answers ListOffsets like Tansu (the last batch's base
offset + 1) and fetches whole batches; the transport choice for the fetch wait.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition

from stream_processor.broker import ANY_BROKER, APACHE_KAFKA
from stream_processor.kafka import app_class
from stream_processor.offsets import true_end_offsets

pytestmark = pytest.mark.unit

TP = TopicPartition("audit.events", 0)


class TansuLike:
    """One partition holding two batches: offsets 0-2 and 3-6 (the last batch's base is 3)."""

    def __init__(self) -> None:
        self.batches = [range(0, 3), range(3, 7)]
        self.position = 0
        self.fetches = 0

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.batches[-1].start + 1 for tp in tps}  # Tansu: base offset + 1

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position = offset

    async def getmany(self, tp: TopicPartition, timeout_ms: int) -> dict[Any, list[Any]]:
        self.fetches += 1
        batch = next(b for b in self.batches if self.position in b)  # whole batches
        return {tp: [SimpleNamespace(offset=o) for o in batch]}


async def test_without_exact_end_offsets_the_tail_of_the_last_batch_is_found() -> None:
    consumer = TansuLike()
    assert await true_end_offsets(consumer, [TP]) == {0: 7}  # type: ignore[arg-type]
    assert consumer.fetches == 1


async def test_a_broker_with_exact_end_offsets_is_taken_at_its_word() -> None:
    consumer = TansuLike()
    ends = await true_end_offsets(consumer, [TP], APACHE_KAFKA)  # type: ignore[arg-type]
    assert ends == {0: 4} and consumer.fetches == 0  # what it reported, nothing read


def test_the_fetch_wait_override_is_installed_unless_empty_fetches_are_prompt() -> None:
    assert app_class(77, APACHE_KAFKA) is faust.App  # Faust's own transport, 1,500 ms
    overridden = app_class(77, ANY_BROKER)
    assert issubclass(overridden, faust.App) and overridden is not faust.App
