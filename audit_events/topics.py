"""The Kafka topics, as data: one specification every creator uses.

The API, the SDK, the processor, compose's ``kafka-init`` job and the k8s
topic Job all create the topics from :func:`topic_specs` (the deployment files
are checked against it by ``tests/unit/deploy/test_deploy.py``). Every topic keeps
every record: ``retention.ms=-1``, ``retention.bytes=-1``, ``cleanup.policy=delete``.

- ``events``: the source of truth that replay rebuilds the store from.
- ``checkpoints``: signed chain heads. Never compacted: the key is the tenant,
  so compaction would keep one checkpoint per tenant and drop the older ones a
  verifier needs to date a truncation (and those signed by retired keys).
- ``dlq``: rejected input (original bytes, reason, offset). Kept forever too:
  it is the only record of why an accepted record never reached the store
  (including forged control events and reused ids), and a replay with other
  limits or code would not re-derive it. It stays small.

:func:`deletes_records` is the pure check the processor and the API run on
the live events topic at start (see ``audit_events.topic_admin``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from audit_events.settings import AuditSettings

EVENTS = "audit.events"
DLQ = "audit.events.dlq"
CHECKPOINTS = "audit.checkpoints"

Role = Literal["events", "dlq", "checkpoints"]
ROLES: tuple[Role, ...] = ("events", "dlq", "checkpoints")

#: The configs every topic is created with: nothing is ever deleted.
KEEP_EVERYTHING: Mapping[str, str] = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
}


@dataclass(frozen=True)
class TopicSpec:
    role: Role
    name: str
    partitions: int
    replication: int
    configs: Mapping[str, str] = field(default_factory=dict)


def min_insync_replicas(replication: int) -> int:
    """Acks=all writes need this many in-sync replicas: 2 of 3, 1 of 1 (never all)."""
    return max(1, min(2, replication - 1))


def topic_configs(replication: int) -> dict[str, str]:
    """The configs every topic is created with (the same for all three roles)."""
    return {**KEEP_EVERYTHING, "min.insync.replicas": str(min_insync_replicas(replication))}


def topic_specs(settings: AuditSettings) -> list[TopicSpec]:
    """The three topics with names, partitions and replication from ``settings``."""
    names: dict[Role, str] = {
        "events": settings.topic_events,
        "dlq": settings.topic_dlq,
        "checkpoints": settings.topic_checkpoints,
    }
    replication = settings.kafka_replication
    return [
        TopicSpec(
            role, names[role], settings.kafka_partitions, replication, topic_configs(replication)
        )
        for role in ROLES
    ]


def topic_spec(settings: AuditSettings, role: Role) -> TopicSpec:
    (spec,) = [s for s in topic_specs(settings) if s.role == role]
    return spec


def deletes_records(configs: Mapping[str, str]) -> str | None:
    """Why a topic with these live configs would delete records, or None if it keeps all.

    ``configs`` is what the broker reports (``describe_configs``). Apache Kafka
    reports every config, defaults included; Tansu reports only the configs a
    topic was created with. A missing one means the broker's default applies
    (``retention.ms`` is 7 days on Kafka), so it counts as deleting.
    """
    policy = configs.get("cleanup.policy")
    if policy is None:
        return "cleanup.policy is not reported (the broker default applies)"
    if "compact" in {p.strip() for p in policy.split(",")}:
        return f"cleanup.policy={policy} (compaction keeps one record per tenant)"
    for name in ("retention.ms", "retention.bytes"):
        value = configs.get(name)
        if value is None:
            return f"{name} is not reported (the broker default applies)"
        try:
            finite = int(value) >= 0
        except ValueError:
            return f"{name}={value} is not a number"
        if finite:
            return f"{name}={value}"
    return None


def partition_key(tenant: str) -> bytes:
    """The partition key of an event: its tenant, so a tenant is totally ordered."""
    return tenant.encode("utf-8")
