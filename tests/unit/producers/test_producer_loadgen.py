"""The load generator: valid, reproducible, skewed towards hot tenants."""

from __future__ import annotations

from collections import Counter

import pytest

from producers.loadgen import generate_events

pytestmark = pytest.mark.unit


def test_same_seed_same_events_and_zipf_skew() -> None:
    events = list(generate_events(5000, 20, seed=11))
    again = list(generate_events(5000, 20, seed=11))
    assert [e.id for e in events] == [e.id for e in again] and len({e.id for e in events}) == 5000
    counts = Counter(e.tenant for e in events)
    assert set(counts) <= {f"tenant-{i:03d}" for i in range(20)}
    ranked = [counts[f"tenant-{i:03d}"] for i in range(20)]
    assert ranked[0] > 4 * ranked[19] and ranked[0] > 0.2 * 5000  # the hottest dominates
    updates = [e for e in events if e.action.endswith(".update")]
    assert updates and all(e.changes and e.crud == "u" for e in updates)
    assert all(e.actor is not None and e.context is not None for e in events)
    times = [e.occurred_at for e in events]
    assert times == sorted(times)
