"""Step 9: bump the cache generations of everything a stored batch changed, once.

The scopes are those of the batch's documents (tenant; tenant + each target)
and those of every event a control event of the batch changed (Step 6 collects
them in ``batch.changed``: a corrected or erased event's own targets, i.e. its
object history). One call to the :class:`~stream_processor.sinks.Invalidator`
(Redis: one pipelined round trip, stream_processor/sinks.py), after the batch is
durable and before its offsets are committed. The same round trip announces, per
tenant, the events the batch stored (id and content hash; its conflicts are not
stored and not named), which answers ``?wait=true`` requests (audit_events/notify.py).

Best effort: with Redis down the batch is still committed; the failure is
counted (``auditstream_invalidation_failures_total``) and cached entries expire
by their TTL (README, "Caching").
"""

from __future__ import annotations

import logging

from stream_processor.metrics import ProcessorMetrics
from stream_processor.records import Batch
from stream_processor.sinks import Invalidator

log = logging.getLogger("auditstream.processor")


class Invalidate:
    def __init__(self, invalidator: Invalidator, metrics: ProcessorMetrics | None = None) -> None:
        self._invalidator = invalidator
        self._metrics = metrics or ProcessorMetrics()

    async def __call__(self, batch: Batch) -> None:
        """Bump; never raises for an invalidator failure (counted and logged)."""
        try:
            await self._invalidator.bump(
                batch.documents + batch.changed, stored=batch.stored_documents()
            )
        except Exception as exc:  # Redis down: keep ingesting, TTL bounds staleness
            self._metrics.invalidation_failures.inc()
            log.warning("cache invalidation failed (%s); entries expire by TTL", exc)
