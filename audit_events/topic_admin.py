"""Creating the topics from :mod:`audit_events.topics` and checking the live ones.

Shared by the API, the SDK and the processor (each creates what it needs at
start, idempotently). What the embedded broker (Tansu) answers, seen here:
``create_topics`` with configs stores them and ``describe_configs`` reports
them back; it reports only configs set at creation (Apache Kafka reports every
config, defaults included), answers an unknown topic with no configs and no
error, and closes the connection on a *filtered* ``describe_configs``. So the
topic is always described unfiltered (valid on Kafka too), and a config the
broker does not report counts as the broker's default (see
:func:`audit_events.topics.deletes_records`). Production Kafka gets exactly the
same requests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from audit_events.connections import kafka_client_options
from audit_events.settings import AuditSettings, SettingsError
from audit_events.topics import TopicSpec, deletes_records, topic_specs

log = logging.getLogger("auditstream.topics")


class TopicRetentionError(SettingsError):
    """The events topic would delete records; the message is one line naming it."""


class TopicAdminError(SettingsError):
    """The broker refused to create a topic (a bad config, too few brokers for the
    replication) or to describe its configs; the message is one line."""


async def create_missing(admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; returns their names.

    An existing topic is left as it is (never altered): :func:`check_events_topic`
    says whether it keeps everything. Raises :class:`TopicAdminError` when the
    broker rejects a creation (bad config, too few brokers for the replication).
    """
    existing = set(await admin.list_topics())
    wanted = [s for s in specs if s.name not in existing]
    if not wanted:
        return []
    response = await admin.create_topics(
        [
            NewTopic(s.name, s.partitions, s.replication, topic_configs=dict(s.configs))
            for s in wanted
        ]
    )
    created = []
    for item in response.topic_errors:  # (topic, error_code[, error_message, ...])
        name, code = str(item[0]), int(item[1])
        if code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:  # a concurrent creator won: fine
            message = item[2] if len(item) > 2 and item[2] else for_code(code).__name__
            raise TopicAdminError(f"creating topic {name} failed: {message}")
    for name in created:
        log.info("created topic %s", name)
    return created


async def live_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    """The topic's configs as the broker reports them (unfiltered: see module doc)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    out: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            code, message, entries = int(resource[0]), resource[1], resource[4]
            if code != 0:
                why = message or for_code(code).__name__
                raise TopicAdminError(f"describing topic {topic} failed: {why}")
            for entry in entries:  # (name, value, read_only, source/is_default, ...)
                if entry[1] is not None:
                    out[str(entry[0])] = str(entry[1])
    return out


def _admin(settings: AuditSettings, **options: Any) -> AIOKafkaAdminClient:
    settings.require("kafka_bootstrap")
    security = kafka_client_options(settings)  # SASL/TLS (audit_events/connections.py)
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **{**security, **options}
    )


async def ensure_topics(settings: AuditSettings, **admin_options: Any) -> list[str]:
    """Create every missing topic of the specification (idempotent)."""
    admin = _admin(settings, **admin_options)
    await admin.start()
    try:
        return await create_missing(admin, topic_specs(settings))
    finally:
        await admin.close()


async def check_events_topic(settings: AuditSettings, admin: AIOKafkaAdminClient) -> None:
    """Refuse (raise :class:`TopicRetentionError`) when the events topic deletes records.

    ``AUDITSTREAM_ALLOW_FINITE_RETENTION=true`` turns the refusal into one
    warning line. The other topics are only warned about.
    """
    for spec in topic_specs(settings):
        try:
            why = deletes_records(await live_configs(admin, spec.name))
        except (KafkaError, TopicAdminError) as exc:
            why = f"its configs cannot be read ({exc})"
        if why is None:
            continue
        if spec.role != "events":
            log.warning("topic %s would delete records: %s", spec.name, why)
        elif settings.allow_finite_retention:
            log.warning(
                "topic %s would delete records: %s (accepted: AUDITSTREAM_ALLOW_FINITE_RETENTION)",
                spec.name,
                why,
            )
        else:
            raise TopicRetentionError(
                f"refusing to start: topic {spec.name} would delete records: {why}; set "
                "retention.ms=-1, retention.bytes=-1, cleanup.policy=delete on it "
                "(deploy/README.md) or AUDITSTREAM_ALLOW_FINITE_RETENTION=true to accept that"
            )


async def prepare_topics(settings: AuditSettings, **admin_options: Any) -> None:
    """At a service's start: create missing topics from the spec, then check the events topic."""
    admin = _admin(settings, **admin_options)
    await admin.start()
    try:
        await create_missing(admin, topic_specs(settings))
        await check_events_topic(settings, admin)
    finally:
        await admin.close()


async def _create_and_show(settings: AuditSettings) -> None:
    admin = _admin(settings)
    await admin.start()
    try:
        created = set(await create_missing(admin, topic_specs(settings)))
        for spec in topic_specs(settings):
            live = await live_configs(admin, spec.name)
            shown = " ".join(f"{k}={live.get(k)}" for k in spec.configs)
            state = "created" if spec.name in created else "exists"
            print(f"{spec.role} {spec.name} ({state}): {shown}")
        await check_events_topic(settings, admin)
    finally:
        await admin.close()


def main() -> int:
    """``python -m audit_events.topic_admin``: create the missing topics from the spec
    (the k8s topic Job runs this), print each topic's live configs, and exit 1 with
    one line when the events topic would delete records."""
    import asyncio
    import sys

    from audit_events.settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        asyncio.run(_create_and_show(load_settings()))
    except (SettingsError, KafkaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
