"""Prometheus metrics of the stream worker, per destination (own registry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class StreamMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        labels = ["stream", "tenant", "kind"]
        self.delivered = Counter(
            "auditstream_stream_events_delivered", "Events delivered", labels, registry=r
        )
        self.batches = Counter(
            "auditstream_stream_batches_delivered", "Batches delivered", labels, registry=r
        )
        self.failures = Counter(
            "auditstream_stream_delivery_failures", "Failed delivery attempts", labels, registry=r
        )
        self.dead_lettered = Counter(
            "auditstream_stream_events_dead_lettered",
            "Events moved to the dead-letter list",
            labels,
            registry=r,
        )
        self.lag_events = Gauge(
            "auditstream_stream_lag_events", "Stored events not yet delivered", labels, registry=r
        )
        self.lag_seconds = Gauge(
            "auditstream_stream_lag_seconds",
            "Age of the oldest stored event not yet delivered",
            labels,
            registry=r,
        )
        self.last_success = Gauge(
            "auditstream_stream_last_success_timestamp_seconds",
            "When the last batch was delivered (Unix time)",
            labels,
            registry=r,
        )
