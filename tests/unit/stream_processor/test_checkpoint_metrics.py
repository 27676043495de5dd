"""Checkpoint age and failures as processor metrics (issue 21 alerts).

``auditstream_checkpoint_pending_age_seconds`` is how long the oldest stored
chain head has waited for its signed checkpoint; the alert fires when it
exceeds the checkpoint interval by far (publishing or storing checkpoints fails).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from audit_events.chain import generate_keypair, load_private_key
from stream_processor.checkpoints import Checkpointer
from stream_processor.metrics import ProcessorMetrics

pytestmark = pytest.mark.unit
PRIVATE, _ = generate_keypair()
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Store:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    async def replace_one(self, flt: dict[str, Any], doc: dict[str, Any], upsert: bool) -> None:
        self.docs[flt["_id"]] = doc


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def _value(metrics: ProcessorMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


async def test_pending_age_grows_while_checkpoints_fail_and_drops_when_one_is_signed() -> None:
    clock, metrics, down = Clock(), ProcessorMetrics(), [True]

    async def publish(key: bytes, value: bytes) -> None:
        if down[0]:
            raise ConnectionError("checkpoints topic unreachable")

    cp = Checkpointer(
        load_private_key(PRIVATE),
        publish,
        Store(),  # type: ignore[arg-type]
        every_events=1000,
        every_seconds=60,
        clock=clock,
        now=lambda: NOW,
        metrics=metrics,
    )
    assert _value(metrics, "auditstream_checkpoint_pending_age_seconds") == 0
    assert await cp.after_batch({"acme": (1, "h1")}) == 0  # due at once, but publishing fails
    assert _value(metrics, "auditstream_checkpoint_failures_total") == 1
    clock.t = 1100.0
    assert await cp.after_batch({"acme": (2, "h2"), "globex": (1, "g1")}) == 0
    # The oldest waiting head (acme's since t=1000) sets the age, not the newest.
    assert _value(metrics, "auditstream_checkpoint_pending_age_seconds") == 100
    assert _value(metrics, "auditstream_checkpoint_failures_total") == 3
    assert _value(metrics, "auditstream_checkpoint_last_success_timestamp_seconds") == 0
    down[0] = False
    clock.t = 1130.0
    assert await cp.idle() == 2
    assert _value(metrics, "auditstream_checkpoint_pending_age_seconds") == 0
    assert _value(metrics, "auditstream_checkpoint_last_success_timestamp_seconds") == (
        NOW.timestamp()
    )


async def test_a_checkpointer_without_metrics_still_reports_its_pending_age() -> None:
    clock = Clock()

    async def publish(key: bytes, value: bytes) -> None:
        return None

    cp = Checkpointer(
        load_private_key(PRIVATE),
        publish,
        Store(),  # type: ignore[arg-type]
        every_events=1000,
        every_seconds=60,
        clock=clock,
        now=lambda: NOW,
    )
    assert await cp.after_batch({"acme": (1, "h1")}) == 1  # signed at once
    assert cp.pending_age() == 0
    clock.t = 1010.0
    assert await cp.after_batch({"acme": (2, "h2")}) == 0  # not due for 60 s
    clock.t = 1040.0
    assert cp.pending_age() == 30
