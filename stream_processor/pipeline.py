"""The processor's batch pipeline, free of any Kafka framework: the steps, in order.

One numbering for the whole write path (docs/processor.md, "Steps"); each step
is a small object (``async (batch) -> None``) in its own module, and
:meth:`BatchProcessor.process` composes them:

1. batch: flush at N events or T ms (``flush.py``, ``batching.py``);
2. decode + validate every record, and the control-event gate (``decode.py``);
3. dead-letter the rejects, acknowledged by the broker (here, ``sinks.py``);
4. the swap fence: wait while ``auditstream replay`` swaps collections (``fence.py``);
5. seal + ordered insert (idempotent, durable), with duplicate recovery; events
   whose (tenant, id) is stored with another content come back as conflicts
   (``chain.py``);
6. apply the stored control events: corrections, erasures (``control.py``);
7. checkpoint the tenant heads that are due (``checkpoints.py``; best effort);
8. dead-letter the conflicts with their original records (reason ``duplicate
   id with different content``), before anything of the batch is committed;
9. bump the cache generations of the batch and of what its control events
   changed, once (``invalidate.py``; best effort: failures are counted, TTLs
   bound staleness);
10. only then does :meth:`BatchProcessor.process` return, and the caller
    (``batching.py``) commits the offsets the batch carries.

Every step is retried with backoff (:class:`RetryPolicy`) until it succeeds;
the best-effort steps (7, 9) swallow their own failures. Steps 4 and 5 are
retried together, so every write attempt checks the fence first. Every step is
idempotent, so retrying one after a partial failure is safe. If a step cannot
succeed before the retry deadline, :class:`BatchFailed` is raised; the adapter
must then exit the process *without* committing anything (the commit-after-write
rule, README "Guarantees").

Why a plain sequence and not arroyo's chain of ``submit/poll/join`` strategies:
the loop processes one batch at a time to completion before it commits, so
there is no work in flight for ``poll`` or ``join`` to wait for; the one thing
the steps share, the retry of a failing step, lives once, here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from audit_events.schema import Limits
from stream_processor.decode import decode_batch
from stream_processor.metrics import ProcessorMetrics
from stream_processor.records import Batch, Record
from stream_processor.retry import RetryPolicy
from stream_processor.sinks import DeadLetters

log = logging.getLogger("auditstream.processor")
Step = Callable[[Batch], Awaitable[None]]


class BatchFailed(Exception):
    """A batch could not be stored before the retry deadline; do not commit it."""


class BatchProcessor:
    """Steps 2-9 for one batch; ``fence``, ``controls`` and ``checkpoint`` are optional."""

    def __init__(
        self,
        write: Step,
        invalidate: Step,
        dead_letters: DeadLetters,
        *,
        fence: Step | None = None,
        controls: Step | None = None,
        checkpoint: Step | None = None,
        limits: Limits,
        max_event_bytes: int,
        tenant_keys_only: bool = True,
        retry: RetryPolicy,
        metrics: ProcessorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        check: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self._write = write
        self._fence = fence
        self._controls = controls
        self._checkpoint = checkpoint
        self._invalidate = invalidate
        self._check = check  # the control-event gate: a reason dead-letters the record
        self._dead_letters = dead_letters
        self._limits = limits
        self._max_event_bytes = max_event_bytes
        self._tenant_keys_only = tenant_keys_only
        self._retry = retry
        self._metrics = metrics or ProcessorMetrics()
        self._clock = clock
        self._sleep = sleep

    async def process(self, records: list[Record]) -> Batch:
        """Store ``records``; returns the batch once its offsets may be committed."""
        batch = decode_batch(  # 2
            records,
            self._limits,
            self._max_event_bytes,
            self._check,
            tenant_keys_only=self._tenant_keys_only,
        )
        m = self._metrics
        m.batch_size.observe(len(records))
        await self._with_retry("dead-letter", self._send_rejects, batch)  # 3
        await self._with_retry("write", self._fenced_write, batch)  # 4 + 5
        if self._controls is not None:
            await self._with_retry("apply controls", self._controls, batch)  # 6
        if self._checkpoint is not None:
            await self._with_retry("checkpoint", self._checkpoint, batch)  # 7
        await self._with_retry("dead-letter", self._send_rejects, batch)  # 8: the conflicts
        stored_at = time.time()  # wall clock, like the records' Kafka timestamps
        for record in records:
            m.store_delay.observe(max(0.0, stored_at - record.timestamp_ms / 1000))
        await self._with_retry("invalidate", self._invalidate, batch)  # 9
        return batch  # 10: the caller commits batch.committable()

    async def _fenced_write(self, batch: Batch) -> None:
        if self._fence is not None:
            await self._fence(batch)
        await self._write(batch)

    async def _send_rejects(self, batch: Batch) -> None:
        # ``dead_lettered`` advances per acknowledged send, so a retry after a
        # partial failure resends only the rest.
        for record, reason in batch.rejects[batch.dead_lettered :]:
            await self._dead_letters.send(record, reason)
            batch.dead_lettered += 1
            self._metrics.dead_lettered.inc()

    async def _with_retry(self, what: str, step: Step, batch: Batch) -> None:
        started = self._clock()
        attempt = 0
        while True:
            try:
                await step(batch)
                return
            except Exception as exc:
                attempt += 1
                self._metrics.retries.inc()
                if self._retry.should_give_up(started, self._clock()):
                    raise BatchFailed(f"{what} failed for {attempt} attempts: {exc}") from exc
                delay = self._retry.delay(attempt)
                log.warning("%s failed (attempt %d, retry in %.2fs): %s", what, attempt, delay, exc)
                await self._sleep(delay)
