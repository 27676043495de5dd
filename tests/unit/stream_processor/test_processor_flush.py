"""The flush policy: N events or T ms after the batch's first event, on a fixed clock."""

from __future__ import annotations

import pytest

from stream_processor.flush import FlushPolicy

pytestmark = pytest.mark.unit

POLICY = FlushPolicy(max_events=3, max_ms=200)


def test_empty_batch_is_never_due() -> None:
    assert POLICY.should_flush(now=1_000.0, batch_started=None, count=0) is False
    assert POLICY.wait_time(now=1_000.0, batch_started=None) is None


def test_due_at_max_events_immediately() -> None:
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=2) is False
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=3) is True
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=4) is True


def test_due_after_max_ms_since_first_event() -> None:
    assert POLICY.should_flush(now=10.199, batch_started=10.0, count=1) is False
    assert POLICY.should_flush(now=10.2, batch_started=10.0, count=1) is True
    assert POLICY.should_flush(now=99.0, batch_started=10.0, count=1) is True


def test_wait_time_counts_down_to_the_deadline_and_never_goes_negative() -> None:
    assert POLICY.wait_time(now=10.0, batch_started=10.0) == pytest.approx(0.2)
    assert POLICY.wait_time(now=10.15, batch_started=10.0) == pytest.approx(0.05)
    assert POLICY.wait_time(now=11.0, batch_started=10.0) == 0.0


@pytest.mark.parametrize(("events", "ms"), [(0, 200), (3, 0), (-1, -1)])
def test_rejects_non_positive_bounds(events: int, ms: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        FlushPolicy(events, ms)


def test_caught_up_flushes_a_partial_batch_at_once() -> None:
    # nothing more pending: waiting out max_ms cannot grow the batch
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=1, caught_up=True) is True
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=1, caught_up=False) is False


def test_caught_up_never_flushes_an_empty_batch() -> None:
    assert POLICY.should_flush(now=10.0, batch_started=None, count=0, caught_up=True) is False


def test_behind_keeps_the_size_and_time_bounds() -> None:
    assert POLICY.should_flush(now=10.0, batch_started=10.0, count=3, caught_up=False) is True
    assert POLICY.should_flush(now=10.2, batch_started=10.0, count=1, caught_up=False) is True
