"""Failed-login throttling with a fixed clock (Redis unavailable: in-process)."""

from __future__ import annotations

import pytest

from query_api.throttle import LoginThrottle

pytestmark = pytest.mark.unit


async def test_per_user_and_per_ip_limits_and_window_reset() -> None:
    now = [10_000.0]
    t = LoginThrottle(None, max_per_user=2, max_per_ip=3, window_seconds=60, clock=lambda: now[0])
    assert await t.blocked("alice", "1.2.3.4") is None
    await t.failed("alice", "1.2.3.4")
    await t.failed("alice", "1.2.3.4")
    wait = await t.blocked("alice", "5.6.7.8")  # the name is blocked from anywhere
    assert wait is not None and 0 < wait <= 60
    assert await t.blocked("bob", "1.2.3.4") is None
    await t.failed("bob", "1.2.3.4")  # third failure from this IP
    assert await t.blocked("carol", "1.2.3.4") is not None
    assert await t.blocked("carol", "9.9.9.9") is None
    now[0] += 60  # next window
    assert await t.blocked("alice", "1.2.3.4") is None
