"""Prometheus metrics of one processor worker (its own registry, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class ProcessorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.stored = Counter("auditstream_events_stored", "Events newly stored", registry=r)
        self.dead_lettered = Counter(
            "auditstream_events_dead_lettered", "Events sent to the DLQ", registry=r
        )
        self.duplicates = Counter(
            "auditstream_events_duplicate", "Redelivered events skipped as duplicates", registry=r
        )
        self.duplicate_id_conflicts = Counter(
            "auditstream_duplicate_id_conflicts",
            "Events dead-lettered because their tenant already stored another event with that id",
            registry=r,
        )
        self.batch_size = Histogram(
            "auditstream_batch_size",
            "Events per flushed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.batch_wait = Histogram(
            "auditstream_batch_wait_seconds",
            "Seconds from a batch's start (its first event taken, or the previous write's"
            " start for events that queued up during it) until it was flushed",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.write_seconds = Histogram(
            "auditstream_write_seconds", "MongoDB bulk-write latency", registry=r
        )
        self.store_delay = Histogram(
            "auditstream_store_delay_seconds",
            "Seconds from an event's Kafka timestamp until its batch was stored",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.retries = Counter("auditstream_batch_retries", "Failed batch attempts", registry=r)
        self.invalidation_failures = Counter(
            "auditstream_invalidation_failures", "Cache generation bumps that failed", registry=r
        )
        self.commit_failures = Counter(
            "auditstream_commit_failures",
            "Offset commits that did not happen (retried with the next batch)",
            registry=r,
        )
        # Checkpoint health (helper H7, issue 21 alerts): set by the Checkpointer.
        self.checkpoint_pending_age = Gauge(
            "auditstream_checkpoint_pending_age_seconds",
            "Seconds the oldest stored chain head without a signed checkpoint has waited"
            " (0: every stored head is signed)",
            registry=r,
        )
        self.checkpoint_last_success = Gauge(
            "auditstream_checkpoint_last_success_timestamp_seconds",
            "Unix time of this worker's last signed checkpoint (0: none yet)",
            registry=r,
        )
        self.checkpoint_failures = Counter(
            "auditstream_checkpoint_failures",
            "Checkpoints that could not be published or stored (retried)",
            registry=r,
        )
        self.lag = Gauge(
            "auditstream_consumer_lag",
            "Messages behind the high watermark",
            ["topic", "partition"],
            registry=r,
        )
