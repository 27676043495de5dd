"""``auditstream retention set/clear`` leave the change in the audit trail, as
``PUT /v1/retention`` does: one ``retention.policy.changed`` event of the tenant per
change, with its days and version; an admin change is in the trail whichever way it
is made."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pymongo.asynchronous.collection import AsyncCollection

from audit_events.retention import policy_view
from audit_events.settings import AuditSettings
from audit_events.topic_admin import ensure_topics
from tests.helpers import run_cli
from tests.integration.stream_processor.test_archive import topic_records

pytestmark = pytest.mark.integration
CHANGED = "retention.policy.changed"


async def changes(settings: AuditSettings) -> list[dict[str, Any]]:
    records = await topic_records(settings)
    return [
        event
        for (topic, _, _), (_, value, *_) in sorted(records.items())
        if topic == settings.topic_events
        and (event := orjson.loads(value)).get("action") == CHANGED
    ]


async def test_cli_retention_changes_are_published_as_audit_events(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]]
) -> None:
    await ensure_topics(settings)
    set_ = run_cli(settings, "retention", "set", "acme", "--days", "30")
    assert set_.returncode == 0, set_.stderr
    assert orjson.loads(set_.stdout)["audited"] is True
    cleared = run_cli(settings, "retention", "clear", "acme")
    assert cleared.returncode == 0, cleared.stderr
    assert orjson.loads(cleared.stdout)["audited"] is True
    events = await changes(settings)
    assert [e["metadata"] for e in events] == [
        {"days": 30, "version": 1},
        {"days": None, "version": 2},
    ]
    for event in events:
        assert event["tenant"] == "acme" and event["crud"] == "u"
        assert event["targets"] == [{"type": "retention_policy", "id": "acme"}]
        assert event["actor"]["type"] == "admin" and event["actor"]["id"].startswith("cli:")
        assert event["source"] == {"service": "auditstream-cli"}


async def test_cli_retention_change_without_kafka_is_saved_and_says_it_is_not_audited(
    settings: AuditSettings, store: AsyncCollection[dict[str, Any]]
) -> None:
    """Kafka unreachable: the policy is saved (as the API saves it), the output says
    ``audited: false``, stderr says why and the exit status is 1."""
    down = run_cli(
        settings,
        "retention",
        "set",
        "acme",
        "--days",
        "7",
        AUDITSTREAM_KAFKA_BOOTSTRAP="127.0.0.1:9",
    )
    assert down.returncode == 1, down
    assert orjson.loads(down.stdout)["audited"] is False
    assert "not published" in down.stderr
    view = await policy_view(store.database, "acme")
    assert (view["days"], view["version"]) == (7, 1)
