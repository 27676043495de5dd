"""Prometheus metrics of the archiver (its own registry, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class ArchiveMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.segments = Counter(
            "auditstream_archive_segments_written", "Segments published", ["topic"], registry=r
        )
        self.records = Counter(
            "auditstream_archive_records", "Records archived", ["topic"], registry=r
        )
        self.bytes = Counter(
            "auditstream_archive_bytes", "Compressed segment bytes written", ["topic"], registry=r
        )
        self.epochs = Counter(
            "auditstream_archive_epochs_started",
            "New epochs (a topic whose history restarted)",
            ["topic"],
            registry=r,
        )
        self.lag = Gauge(
            "auditstream_archive_lag_records",
            "Records on the topic not yet in a published segment",
            ["topic", "partition"],
            registry=r,
        )
        self.write_errors = Counter(
            "auditstream_archive_write_errors",
            "Failed attempts to publish segments (disk or object store; retried)",
            registry=r,
        )
        self.last_segment = Gauge(
            "auditstream_archive_last_segment_timestamp_seconds",
            "When the last segment was published (Unix time)",
            registry=r,
        )
