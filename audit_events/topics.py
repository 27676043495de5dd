"""Kafka topic roles. Names come from settings; these are the defaults."""

from __future__ import annotations

EVENTS = "audit.events"
DLQ = "audit.events.dlq"
CHECKPOINTS = "audit.checkpoints"


def partition_key(tenant: str) -> bytes:
    """The partition key of an event: its tenant, so a tenant is totally ordered."""
    return tenant.encode("utf-8")
