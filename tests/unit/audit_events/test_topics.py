"""The topic specification (audit_events.topics) and the retention check, as pure logic."""

from __future__ import annotations

import pytest

from audit_events.settings import AuditSettings
from audit_events.topics import deletes_records, min_insync_replicas, topic_spec, topic_specs

pytestmark = pytest.mark.unit


def test_every_topic_keeps_everything_and_is_never_compacted() -> None:
    settings = AuditSettings(kafka_partitions=12, kafka_replication=3, topic_events="ev")
    specs = {s.role: s for s in topic_specs(settings)}
    assert set(specs) == {"events", "dlq", "checkpoints"}
    assert specs["events"].name == "ev"
    for spec in specs.values():
        assert (spec.partitions, spec.replication) == (12, 3)
        assert spec.configs["retention.ms"] == "-1"
        assert spec.configs["retention.bytes"] == "-1"
        assert spec.configs["cleanup.policy"] == "delete"
        assert spec.configs["min.insync.replicas"] == "2"
        assert deletes_records(spec.configs) is None
    assert topic_spec(settings, "checkpoints").name == settings.topic_checkpoints


def test_min_insync_replicas_leaves_one_replica_to_fail() -> None:
    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 2]


@pytest.mark.parametrize(
    ("configs", "named"),
    [
        ({"cleanup.policy": "delete", "retention.ms": "604800000", "retention.bytes": "-1"},
         "retention.ms=604800000"),
        ({"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "1073741824"},
         "retention.bytes=1073741824"),
        ({"cleanup.policy": "compact", "retention.ms": "-1", "retention.bytes": "-1"},
         "cleanup.policy=compact"),
        ({"cleanup.policy": "compact,delete", "retention.ms": "-1", "retention.bytes": "-1"},
         "cleanup.policy=compact,delete"),
        ({"cleanup.policy": "delete", "retention.bytes": "-1"}, "retention.ms is not reported"),
        ({}, "cleanup.policy is not reported"),  # Tansu: a topic created without configs
    ],
)  # fmt: skip
def test_deletes_records_names_the_config(configs: dict[str, str], named: str) -> None:
    why = deletes_records(configs)
    assert why is not None
    assert named in why


def test_retired_public_keys_setting_is_validated() -> None:
    from audit_events.chain import generate_keypair

    keys = [generate_keypair()[1] for _ in range(2)]
    settings = AuditSettings(checkpoint_retired_public_keys=f" {keys[0]} ,{keys[1]},")
    assert settings.checkpoint_retired_public_keys == ",".join(keys)
    with pytest.raises(ValueError, match="not base64 of a raw 32-byte"):
        AuditSettings(checkpoint_retired_public_keys="YWJj")
    with pytest.raises(ValueError, match="not base64 of a raw 32-byte"):
        AuditSettings(checkpoint_retired_public_keys="not base64!")


def test_placeholder_checkpoint_keys_are_refused() -> None:
    """A forgotten REPLACE-ME stops every service at start, naming the setting."""
    from audit_events.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="AUDITSTREAM_CHECKPOINT_SIGNING_KEY"):
        load_settings(checkpoint_signing_key="REPLACE-ME")
    with pytest.raises(SettingsError, match="AUDITSTREAM_CHECKPOINT_PUBLIC_KEY"):
        load_settings(checkpoint_public_key="REPLACE-ME")
    assert load_settings(checkpoint_public_key="").checkpoint_public_key is None
