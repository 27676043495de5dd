"""Step 1: when a batch is flushed — at N events, at T ms, or once the consumer caught up.

Pure: the caller passes the time and whether the consumer has anything more
pending, so tests use a fixed clock.

Caught up (nothing queued, and the broker's high watermark says no record of an
assigned partition is still to come) means waiting out T cannot grow the batch,
so it is flushed at once: an idle stream stores a lone event after one write,
not after T ms. A consumer that is behind (a backlog, or records of a fetch not
yet handed over) still fills batches up to N or T, so under load the batches
stay as big as before.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlushPolicy:
    """Flush a batch once it holds ``max_events`` or its oldest event waited ``max_ms``."""

    max_events: int
    max_ms: int

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_ms < 1:
            raise ValueError("max_events and max_ms must be positive")

    def should_flush(
        self, now: float, batch_started: float | None, count: int, *, caught_up: bool = False
    ) -> bool:
        """True when a batch of ``count`` events, started at ``batch_started``, is due.

        ``now`` and ``batch_started`` are seconds on one monotonic clock;
        ``batch_started`` is ``None`` for an empty batch, which is never due.
        ``caught_up``: the consumer has nothing more pending (no queued record,
        no known record beyond the batch), so a non-empty batch is due now.
        """
        if count <= 0 or batch_started is None:
            return False
        return caught_up or count >= self.max_events or now >= self.deadline(batch_started)

    def wait_time(self, now: float, batch_started: float | None) -> float | None:
        """Seconds the caller may wait for more events before the batch is due.

        ``None`` (wait as long as you like) for an empty batch; never negative.
        """
        if batch_started is None:
            return None
        return max(0.0, self.deadline(batch_started) - now)

    def deadline(self, batch_started: float) -> float:
        """The time at which a batch started at ``batch_started`` is due."""
        return batch_started + self.max_ms / 1000
