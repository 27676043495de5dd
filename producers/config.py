"""Producer configuration: explicit arguments, or :meth:`ProducerConfig.from_settings`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from audit_events import topics
from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings
from producers.masking import ProducerMasking

Compression = Literal["gzip", "lz4", "zstd", "snappy"] | None


@dataclass(frozen=True)
class ProducerConfig:
    """Everything an :class:`~producers.AuditProducer` needs.

    Without a spool (``spool_dir`` and ``spool_path`` both None) ``emit`` raises
    :class:`~producers.errors.DeliveryFailed` when Kafka does not acknowledge, and
    ``start`` raises when Kafka is unreachable. With a spool, nothing is lost while
    Kafka is down: events are kept on disk (bounded) and drained in order later.
    ``spool_dir`` is safe for any number of processes (one file each; files of dead
    processes are drained by live ones); ``spool_path`` is one file for one process.

    ``durable=True`` (needs a spool) writes every event to the spool before ``emit`` /
    ``emit_nowait`` return, and the sender drains the spool into Kafka in the
    background: a process killed at any moment loses nothing it was handed.

    An empty ``bootstrap`` means "no Kafka configured": events are only spooled.
    """

    #: ``host:port[,host:port]``; empty: spool only, never connect.
    bootstrap: str
    topic: str = topics.EVENTS
    #: Fills ``source.service`` of events that carry no ``source``.
    service: str | None = None
    # --- Kafka producer ---
    idempotence: bool = False  # Apache Kafka: True; Tansu rejects InitProducerId
    #: gzip needs nothing extra; lz4/zstd/snappy need their Python libraries.
    compression: Compression = "gzip"
    linger_ms: int = 5
    max_batch_bytes: int = 256 * 1024
    max_request_bytes: int = 1024 * 1024
    request_timeout_ms: int = 10_000
    #: How long one chunk may wait for acknowledgements before Kafka counts as down.
    delivery_timeout: float = 15.0
    #: Create the topic (with these partitions) when missing, also after a broker restart.
    create_topic: bool = True
    partitions: int = 8
    replication: int = 1
    # --- buffering ---
    #: Events ``emit_nowait`` may hold in memory before overflowing to the spool.
    buffer_size: int = 10_000
    #: Events sent per chunk (the unit that is acknowledged or spooled together).
    chunk_size: int = 2_000
    # --- spool ---
    spool_path: Path | None = None
    #: A directory of per-process spool files (takes precedence over ``spool_path``).
    spool_dir: Path | None = None
    #: Write-ahead to the spool before returning from emit/emit_nowait (see above).
    durable: bool = False
    #: SQLite ``synchronous`` of spool commits: "FULL" also survives a power loss (one
    #: fsync per commit), "NORMAL" survives the death of the process. None: "NORMAL" in
    #: durable mode (one commit per event), "FULL" otherwise (commits only in outages).
    spool_synchronous: Literal["FULL", "NORMAL"] | None = None
    #: How often an idle sender looks in ``spool_dir`` for files of dead processes.
    claim_interval: float = 5.0
    #: On close, how long to let an in-flight send finish when the events are on disk
    #: anyway (durable mode); it is resent by the next drainer otherwise.
    close_grace: float = 2.0
    spool_max_events: int = 1_000_000
    spool_max_bytes: int = 512 * 1024 * 1024
    # --- reconnecting ---
    reconnect_initial: float = 0.2
    reconnect_max: float = 5.0
    #: Extra keyword arguments for ``AIOKafkaProducer`` (security settings, client_id…);
    #: the security ones (``KAFKA_SECURITY_KEYS``) also go to the topic-creating admin client.
    kafka_options: dict[str, Any] = field(default_factory=dict)
    #: Masking rules applied to every event before it is encoded (docs/masking.md).
    masking: ProducerMasking | None = None

    def __post_init__(self) -> None:
        if self.durable and self.spool_dir is None and self.spool_path is None:
            raise ValueError("durable=True needs a spool (spool_dir or spool_path)")

    @property
    def synchronous(self) -> Literal["FULL", "NORMAL"]:
        if self.spool_synchronous is not None:
            return self.spool_synchronous
        return "NORMAL" if self.durable else "FULL"

    @property
    def has_spool(self) -> bool:
        return self.spool_dir is not None or self.spool_path is not None

    @classmethod
    def from_settings(cls, settings: AuditSettings, **overrides: Any) -> ProducerConfig:
        """Bootstrap, topic, idempotence and partitions from the shared settings."""
        settings.require("kafka_bootstrap")
        base = cls(
            bootstrap=settings.kafka_bootstrap or "",
            topic=settings.topic_events,
            idempotence=settings.kafka_idempotence,
            partitions=settings.kafka_partitions,
            replication=settings.kafka_replication,
            max_request_bytes=max(1024 * 1024, settings.max_event_bytes * 2),
            kafka_options=kafka_client_options(settings),  # SASL/TLS settings
        )
        return replace(base, **overrides)
