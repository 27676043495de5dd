"""The processor's batch pipeline, free of any Kafka framework.

Order per batch (the commit-after-write rule, see DESIGN.md):

1. decode + validate every record;
2. dead-letter the rejects (acknowledged by the broker);
3. insert the documents (idempotent, durable) — retried with backoff; events
   whose (tenant, id) is already stored with another content come back as
   conflicts and are dead-lettered (reason ``duplicate id with different
   content``) with their original record;
4. bump cache generations (best effort: failures are counted, TTLs bound staleness);
5. only then does :meth:`BatchProcessor.process` return, and the caller may
   ack/commit the batch's offsets.

If a batch cannot be stored before the retry deadline, :class:`BatchFailed` is
raised; the adapter must then exit the process *without* acking anything.
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
from stream_processor.sinks import DUPLICATE_ID_CONFLICT, DeadLetters, Invalidator, Store

log = logging.getLogger("auditstream.processor")


class BatchFailed(Exception):
    """A batch could not be stored before the retry deadline; do not commit it."""


class BatchProcessor:
    def __init__(
        self,
        store: Store,
        invalidator: Invalidator,
        dead_letters: DeadLetters,
        *,
        limits: Limits,
        max_event_bytes: int,
        retry: RetryPolicy,
        metrics: ProcessorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        check: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self._store = store
        self._check = check  # the control-event gate: a reason dead-letters the record
        self._invalidator = invalidator
        self._dead_letters = dead_letters
        self._limits = limits
        self._max_event_bytes = max_event_bytes
        self._retry = retry
        self._metrics = metrics or ProcessorMetrics()
        self._clock = clock
        self._sleep = sleep

    async def process(self, records: list[Record]) -> Batch:
        """Store ``records``; returns the batch once its offsets may be committed."""
        batch = decode_batch(records, self._limits, self._max_event_bytes, self._check)
        m = self._metrics
        m.batch_size.observe(len(records))
        await self._with_retry("dead-letter", self._send_rejects, batch)
        await self._with_retry("write", self._write, batch)
        # Events whose (tenant, id) was stored with another content: dead-lettered
        # with their original record, before anything of the batch is committed.
        await self._with_retry("dead-letter", self._send_rejects, batch)
        stored_at = time.time()  # wall clock, like the records' Kafka timestamps
        for record in records:
            m.store_delay.observe(max(0.0, stored_at - record.timestamp_ms / 1000))
        try:
            await self._invalidator.bump(batch.documents)
        except Exception as exc:  # Redis down: keep ingesting, TTL bounds staleness
            m.invalidation_failures.inc()
            log.warning("cache invalidation failed (%s); entries expire by TTL", exc)
        return batch

    async def _send_rejects(self, batch: Batch) -> None:
        # ``dead_lettered`` advances per acknowledged send, so a retry after a
        # partial failure resends only the rest.
        for record, reason in batch.rejects[batch.dead_lettered :]:
            await self._dead_letters.send(record, reason)
            batch.dead_lettered += 1
            self._metrics.dead_lettered.inc()

    async def _write(self, batch: Batch) -> None:
        started = time.perf_counter()
        result = await self._store.insert(batch.documents)
        self._metrics.write_seconds.observe(time.perf_counter() - started)
        self._metrics.stored.inc(result.inserted)
        self._metrics.duplicates.inc(result.duplicates)
        if result.conflicts:
            sources = _sources(batch)
            for doc in result.conflicts:
                batch.rejects.append((sources[id(doc)], DUPLICATE_ID_CONFLICT))
            self._metrics.duplicate_id_conflicts.inc(len(result.conflicts))
            log.warning(
                "%d event(s) reuse an id of their tenant with different content: dead-lettered",
                len(result.conflicts),
            )

    async def _with_retry(
        self, what: str, step: Callable[[Batch], Awaitable[None]], batch: Batch
    ) -> None:
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


def _sources(batch: Batch) -> dict[int, Record]:
    """``id(document) -> record`` it was decoded from.

    ``decode_batch`` turns every record, in order, into either one document or
    one reject, so the documents pair up with the records that were not rejected.
    """
    rejected = {id(record) for record, _ in batch.rejects}
    accepted = [r for r in batch.records if id(r) not in rejected]
    if len(accepted) != len(batch.documents):
        raise RuntimeError("documents do not pair up with the batch's records")
    return {id(doc): record for doc, record in zip(batch.documents, accepted, strict=True)}
