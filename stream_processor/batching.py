"""Steps 1 and 10: the framework-free consume loop: batch → process → commit, in that order.

The adapter feeds consumed records into an :class:`asyncio.Queue`; :class:`BatchLoop`
collects them until the :class:`FlushPolicy` says the batch is due (N events,
T ms after its first event, or at once when the consumer caught up: nothing
queued and, by the ``backlog`` probe's high watermarks, nothing more to come;
events that queued up while the previous batch was being written count from
that write's start, so they do not wait another T ms), hands the batch to
:meth:`BatchProcessor.process` (Steps 2-9, stream_processor/pipeline.py) and
only when that returned commits the offsets *the batch carries*
(``Batch.committable()``). Nothing else ever commits, so an offset is committed
only after its event is stored and its cache generations were bumped.

If ``process`` raises (``BatchFailed`` after the retry deadline, or a bug) the
exception propagates out of :meth:`BatchLoop.run` with the batch uncommitted;
the adapter then exits the process so the group redelivers it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from stream_processor.flush import FlushPolicy
from stream_processor.health import Heartbeat
from stream_processor.records import Batch, Record

log = logging.getLogger("auditstream.processor")

Offsets = dict[tuple[str, int], int]
#: ``backlog(positions)``: True when the consumer knows of records past ``positions``
#: (``{(topic, partition): offset after the last record the loop took}``).
Backlog = Callable[[Mapping[tuple[str, int], int]], bool]


class Committer(Protocol):
    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> bool:
        """Commit ``{(topic, partition): next_offset}``.

        Called only with offsets of stored batches. Returns False when the commit
        did not happen (e.g. a rebalance is in progress); the loop then retries
        with the next commit. Offsets of partitions no longer assigned may be
        dropped (their new owner re-reads them; the sink is idempotent).
        """


class Processor(Protocol):
    async def process(self, records: list[Record]) -> Batch:
        """Store ``records``; return the batch once its offsets may be committed."""


class BatchLoop:
    # While offsets wait for a retried commit, wake up this often even when idle.
    COMMIT_RETRY_SECONDS = 1.0
    # With a heartbeat (the liveness probe), an idle loop still steps this often.
    TICK_SECONDS = 1.0

    def __init__(
        self,
        queue: asyncio.Queue[Record],
        policy: FlushPolicy,
        processor: Processor,
        committer: Committer,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[Batch], None] | None = None,
        before_commit: Callable[[Batch], None] | None = None,
        on_commit_failed: Callable[[], None] | None = None,
        heartbeat: Heartbeat | None = None,
        backlog: Backlog | None = None,
        on_flush: Callable[[float], None] | None = None,
        commit_every: Callable[[], float] | None = None,
    ) -> None:
        """``backlog`` None: never known caught up, a partial batch waits out T ms.

        ``on_flush(seconds)`` gets how long each flushed batch waited since its start.
        ``commit_every()``: seconds a stored batch's offsets may wait for the next
        commit (0 or None: committed after each batch). Several small batches then
        share one commit, at the first flush after that time or, idle, when it ends;
        a crash before it only redelivers stored events (the sink is idempotent).
        """
        self._queue = queue
        self._policy = policy
        self._processor = processor
        self._committer = committer
        self._clock = clock
        self._on_batch = on_batch
        self._before_commit = before_commit
        self._on_commit_failed = on_commit_failed
        self._heartbeat = heartbeat
        self._backlog = backlog
        self._on_flush = on_flush
        self._commit_every = commit_every
        self._last_commit = -float("inf")  # when the last commit was made (clock)
        self.pending: list[Record] = []
        # Per partition, the offset after the last record taken (the backlog probe's input).
        self.positions: Offsets = {}
        self.batch_started: float | None = None
        self.uncommitted: Offsets = {}
        # Set by a flush: whatever is queued when it returns arrived after this.
        self._queued_since: float | None = None

    async def run(self) -> None:
        """Consume forever; raises what ``process`` raised, leaving its batch uncommitted."""
        while True:
            await self.step()

    async def step(self) -> None:
        """Flush if due, else wait (bounded by the policy) for one more record."""
        if self._heartbeat is not None:
            self._heartbeat.tick()  # liveness: the loop is stepping
        now, count = self._clock(), len(self.pending)
        if self._policy.should_flush(now, self.batch_started, count, caught_up=self._caught_up()):
            await self.flush()
            return
        if not self._take_ready():
            await self._wait_for_record()

    async def flush(self) -> None:
        """Process the pending records, then commit what the stored batch carries."""
        records, started = self.pending, self.batch_started
        self.pending, self.batch_started = [], None
        self._queued_since = self._clock()
        if self._on_flush is not None and started is not None:
            self._on_flush(max(0.0, self._queued_since - started))
        if self._heartbeat is not None:
            self._heartbeat.flush_started()  # bounded by the retry deadline
        batch = await self._processor.process(records)  # raises → nothing committed
        for tp, offset in batch.committable().items():
            self.uncommitted[tp] = max(offset, self.uncommitted.get(tp, 0))
        if self._on_batch is not None:
            self._on_batch(batch)
        if self._before_commit is not None:
            self._before_commit(batch)  # fault injection in tests: the crash window
        if not self._deferred():
            await self._commit()
        if self._heartbeat is not None:
            self._heartbeat.flush_done()

    def _deferred(self) -> float:
        """Seconds the uncommitted offsets may still wait (``commit_every``); 0: commit now."""
        every = self._commit_every() if self._commit_every is not None else 0.0
        return max(0.0, self._last_commit + every - self._clock()) if every > 0 else 0.0

    async def _commit(self) -> None:
        if not self.uncommitted:
            return
        self._last_commit = self._clock()
        offsets = dict(self.uncommitted)
        if await self._committer.commit(offsets):
            for tp, offset in offsets.items():
                if self.uncommitted.get(tp) == offset:
                    del self.uncommitted[tp]
        elif self._on_commit_failed is not None:
            self._on_commit_failed()

    def _caught_up(self) -> bool:
        """Nothing more pending: no queued record and, by the probe, none still to come."""
        if not self.pending or self._backlog is None or not self._queue.empty():
            return False
        return not self._backlog(self.positions)

    def _add(self, record: Record) -> None:
        if self.batch_started is None:
            since = self._queued_since
            self.batch_started = self._clock() if since is None else since
        self.pending.append(record)
        self.positions[(record.topic, record.partition)] = record.offset + 1

    def _take_ready(self) -> bool:
        """Move already-queued records into the batch without yielding; True if any."""
        took = False
        while len(self.pending) < self._policy.max_events and not self._queue.empty():
            self._add(self._queue.get_nowait())
            took = True
        return took

    async def _wait_for_record(self) -> None:
        self._queued_since = None  # the queue ran dry: the next record arrives now
        timeout = self._policy.wait_time(self._clock(), self.batch_started)
        if self.uncommitted:
            retry = self._deferred() or self.COMMIT_RETRY_SECONDS
            timeout = retry if timeout is None else min(timeout, retry)
        if self._heartbeat is not None:
            tick = self.TICK_SECONDS
            timeout = tick if timeout is None else min(timeout, tick)
        try:
            record = await _get(self._queue, timeout)
        except TimeoutError:
            if self.uncommitted and not self.pending:
                await self._commit()
            return
        self._add(record)


def _get(queue: asyncio.Queue[Record], timeout: float | None) -> Awaitable[Record]:
    if timeout is None:
        return queue.get()
    return asyncio.wait_for(queue.get(), timeout)
