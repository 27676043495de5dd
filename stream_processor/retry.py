"""Retry policy for a failing batch: exponential backoff until a deadline.

Pure: time is passed in, so tests use a fixed clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial_delay: float = 0.25
    max_delay: float = 5.0
    give_up_after: float = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * 2 ** (attempt - 1)))

    def should_give_up(self, started: float, now: float) -> bool:
        """True once the batch has failed for longer than ``give_up_after``."""
        return now - started >= self.give_up_after
