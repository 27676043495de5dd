"""The producer's overflow and spool rules, as a pure policy (no I/O, no clock of its own).

:class:`~producers.producer.AuditProducer` does the I/O (memory buffer, SQLite spool,
Kafka); this object decides, from counts and flags the caller passes in:

- :meth:`SpoolPolicy.admit`: where ``emit_nowait`` puts a new event. In the memory
  buffer while it holds fewer than ``buffer_size`` events; when it is full, the
  buffer *and* the new event go to the spool in one transaction, in order
  (``overflow``); without a spool the event is refused (:class:`BufferFull`).
  Nothing is dropped silently.
- :meth:`SpoolPolicy.next_step`: what the sender does next. Emission order is kept:
  while the spool holds anything, newer events queue up behind it and the spool is
  drained (oldest first) before the buffer is sent again. Spool files of dead
  processes (``spool_dir``) are drained only when the own spool and buffer are empty.
- :meth:`SpoolPolicy.linger`: durable mode gathers a chunk before draining a spool
  that holds less than ``chunk_size`` events (every event is on disk already).
- :meth:`SpoolPolicy.wake_on_emit`: whether an emit must wake the sender during a
  step (not while it drains the spool, which it re-reads anyway; in durable mode
  not while Kafka is away, as new events wait on disk).
- :meth:`SpoolPolicy.unacknowledged`: a chunk Kafka did not acknowledge goes back
  to the *front* of the spool; without a spool, awaited events fail and
  fire-and-forget ones go back to the front of the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where a new event goes: the memory buffer, the spool with the buffer, or nowhere.
Admission = Literal["buffer", "overflow", "refuse"]
#: The sender's next step.
Step = Literal["reconnect", "drain_spool", "send_buffer", "drain_claimed", "claim", "idle"]
#: What happens to a chunk Kafka did not acknowledge.
Requeue = Literal["spool_front", "fail_or_retry"]


@dataclass(frozen=True)
class SpoolPolicy:
    """The rules for a producer with ``buffer_size``, ``chunk_size`` and ``durable``."""

    buffer_size: int
    chunk_size: int
    durable: bool = False

    def admit(self, buffered: int, *, spooling: bool) -> Admission:
        """Where a new event goes when ``buffered`` events wait in memory.

        ``spooling``: the producer has a spool.
        """
        if buffered < self.buffer_size:
            return "buffer"
        return "overflow" if spooling else "refuse"

    def next_step(
        self,
        *,
        connected: bool,
        spool_events: int,
        buffered: int,
        draining_claimed: bool,
        claim_due: bool,
    ) -> Step:
        """The sender's next step.

        ``spool_events``: events in the own spool (0 without one); ``buffered``:
        events in memory; ``draining_claimed``: a dead process's spool file is being
        drained; ``claim_due``: it is time to look for such files.
        """
        if not connected:
            return "reconnect"
        if spool_events:
            return "drain_spool"
        if buffered:
            return "send_buffer"
        if draining_claimed:
            return "drain_claimed"
        if claim_due:
            return "claim"
        return "idle"

    def linger(self, spool_events: int) -> bool:
        """Wait ``linger_ms`` to gather a chunk before draining ``spool_events``?"""
        return self.durable and spool_events < self.chunk_size

    def wake_on_emit(self, step: Step) -> bool:
        """Must an emit wake the sender while it runs ``step``?"""
        if step == "reconnect":
            return not self.durable
        return step not in ("drain_spool", "drain_claimed")

    def unacknowledged(self, *, spooling: bool) -> Requeue:
        """Where a chunk goes that Kafka did not acknowledge (a full spool keeps it in memory)."""
        return "spool_front" if spooling else "fail_or_retry"
