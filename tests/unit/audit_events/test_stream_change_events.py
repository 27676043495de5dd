"""The audit events of destination changes (pure logic): URLs redacted, no secret."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from audit_events.schema import AuditEvent
from audit_events.stream_secrets import StreamSecrets, generate_key
from audit_events.streams import (
    StreamCreate,
    new_stream_document,
    redacted_url,
    update_event,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://h.example/hook?api_key=k1&v=2",
            "https://h.example/hook?api_key=REDACTED&v=2",
        ),
        ("https://u:p@h.example:8443/x", "https://REDACTED@h.example:8443/x"),
        (
            "https://hooks.slack.com/services/T0001/B0002/XXXXXXXXXXXXXXXXXXXX1234",
            "https://hooks.slack.com/services/T0001/B0002/REDACTED",
        ),
        (
            "https://h.example/in?format=json&x=0123456789abcdefABCD#frag",
            "https://h.example/in?format=json&x=REDACTED#REDACTED",
        ),
        (
            "https://splunk:8088/services/collector/event",
            "https://splunk:8088/services/collector/event",
        ),
        ("syslog+tls://logs.example:6514", "syslog+tls://logs.example:6514"),
        (
            "s3+https://minio.example:9000/bucket/audit",
            "s3+https://minio.example:9000/bucket/audit",
        ),
        (None, None),
    ],
)
def test_redacted_url(url: str | None, shown: str | None) -> None:
    assert redacted_url(url) == shown


def test_an_update_event_names_a_rotation_never_the_secret() -> None:
    box = StreamSecrets(generate_key())
    body = StreamCreate(
        kind="webhook", name="n", url="https://h.example/?token=t0p", secret="whsec-0123456789"
    )
    before = new_stream_document(
        "acme", body, head_seq=0, by="x", stream_id="st_1", now=datetime.now(UTC), box=box
    )
    after = {**before, "secret": box.seal("whsec-new-0123456789"), "previous_secret": "x"}
    after["previous_secret_until"] = datetime.now(UTC)
    after["url"] = "https://h.example/v2?token=t1p"
    event = update_event(before, after, actor="alice", service="auditstream-api")
    assert event is not None
    AuditEvent.model_validate(event)
    assert event["action"] == "stream.destination.secret_rotated"
    assert event["metadata"] == {
        "kind": "webhook",
        "changed": ["secret", "url"],
        "secret_rotated": True,
    }
    assert event["changes"] == {
        "url": {
            "old": "https://h.example/?token=REDACTED",
            "new": "https://h.example/v2?token=REDACTED",
        }
    }
    text = orjson.dumps(event).decode()
    assert "whsec" not in text and "t0p" not in text and "t1p" not in text
    assert update_event(before, dict(before), actor="alice", service="s") is None


def test_filters_that_act_the_same_are_no_change() -> None:
    box = StreamSecrets(generate_key())
    body = StreamCreate(kind="syslog", name="n", url="syslog+tls://logs.example:6514")
    before = new_stream_document(
        "acme", body, head_seq=0, by="x", stream_id="st_1", now=datetime.now(UTC), box=box
    )
    assert before["filters"] is None
    same = {**before, "filters": {"actions": []}}
    assert update_event(before, same, actor="a", service="s") is None
    narrowed = {**before, "filters": {"actions": ["user.*"]}}
    event = update_event(before, narrowed, actor="a", service="s")
    assert event is not None and event["changes"] == {
        "filters": {
            "old": {"actions": [], "outcomes": []},
            "new": {"actions": ["user.*"], "outcomes": []},
        }
    }
