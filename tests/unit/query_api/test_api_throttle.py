"""Failed-login throttling without Redis: it fails closed (the counting itself
is tested against a real Redis in tests/integration/query_api/test_api_auth_hardening.py)."""

from __future__ import annotations

import pytest

from query_api.throttle import LoginThrottle, Reservation, ThrottleUnavailable

pytestmark = pytest.mark.unit


async def test_without_redis_nothing_is_reserved() -> None:
    t = LoginThrottle(None, max_per_user=2, max_per_ip=3, window_seconds=60)
    with pytest.raises(ThrottleUnavailable):
        await t.reserve("alice", "1.2.3.4")
    await t.release(Reservation(("k",), None))  # a no-op, never an error


def test_retry_after_is_the_rest_of_the_window() -> None:
    t = LoginThrottle(None, max_per_user=1, max_per_ip=1, window_seconds=60)
    assert t._retry_after(10_000.0) == 20  # window 9960..10020
    assert t._retry_after(10_019.5) == 1
