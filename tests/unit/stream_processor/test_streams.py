"""Log streams: signatures, filters, streamed views, formats, backoff (pure logic)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from audit_events.stream_secrets import StreamSecrets, generate_key
from audit_events.streams import (
    StreamCreate,
    StreamFields,
    matches,
    signature,
    stream_changes,
    stream_view,
    streamed_event,
    url_problem,
    verify_signature,
)
from stream_processor.streams.formats import build_request, signing_secrets
from stream_processor.streams.worker import backoff

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _dest(**kw: Any) -> dict[str, Any]:
    return {"_id": "st_1", "tenant": "acme", "kind": "webhook", "secret": "s-current", **kw}


def _doc(seq: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "_id": f"acme/e{seq}",
        "id": f"e{seq}",
        "tenant": "acme",
        "action": "user.login",
        "outcome": "success",
        "actor": {"id": "u1", "type": "user"},
        "occurred_at": NOW,
        "received_at": NOW,
        "seq": seq,
        "hash": "h",
        "search": ["x"],
        **kw,
    }


def test_signature_accepts_either_secret_and_rejects_stale_or_forged() -> None:
    body = b'{"events":[]}'
    ts = int(time.time())
    header = f"t={ts},v1={signature('old', ts, body)},v1={signature('new', ts, body)}"
    assert verify_signature(header, body, ["old"], now=time.time())
    assert verify_signature(header, body, ["new"], now=time.time())
    assert not verify_signature(header, body, ["other"], now=time.time())
    assert not verify_signature(header, body + b" ", ["new"], now=time.time())
    assert not verify_signature(header, body, ["new"], now=time.time() + 301)  # replayed later
    assert not verify_signature(f"v1={signature('new', ts, body)}", body, ["new"], now=ts)
    assert not verify_signature("garbage", body, ["new"], now=ts)


def test_previous_secret_signs_only_during_the_overlap() -> None:
    dest = _dest(previous_secret="s-old", previous_secret_until=NOW + timedelta(hours=1))
    assert signing_secrets(dest, NOW) == ["s-current", "s-old"]
    assert signing_secrets(dest, NOW + timedelta(hours=2)) == ["s-current"]
    headers, body = build_request(dest, [streamed_event(_doc())], NOW)
    ts = int(NOW.timestamp())
    assert headers["X-Auditstream-Timestamp"] == str(ts)
    assert verify_signature(headers["X-Auditstream-Signature"], body, ["s-old"], now=ts)
    assert verify_signature(headers["X-Auditstream-Signature"], body, ["s-current"], now=ts)


def test_rotation_records_previous_secret() -> None:
    doc = _dest()
    box = StreamSecrets(generate_key())  # secrets are stored encrypted (test_streams_secrets)
    changes = stream_changes(
        doc, StreamFields(secret="s-next-123", name="n"), overlap_seconds=60, now=NOW, box=box
    )
    assert box.open(changes["secret"]) == "s-next-123"
    assert box.open(changes["previous_secret"]) == "s-current"
    assert changes["previous_secret_until"] == NOW + timedelta(seconds=60)
    keyless = StreamSecrets(None)  # no key: nothing to migrate, and no new secret
    assert "secret" not in stream_changes(
        doc, StreamFields(name="n"), overlap_seconds=60, now=NOW, box=keyless
    )


def test_view_never_holds_the_secret() -> None:
    view = stream_view(
        _dest(name="n", url="https://x", previous_secret="s-old", previous_secret_until=NOW)
    )
    text = orjson.dumps(view).decode()
    assert "s-current" not in text and "s-old" not in text and view["secret_set"] is True


def test_filters_use_the_events_action_syntax_and_pass_control_events() -> None:
    f = {"actions": ["invoice.*", "user.login"], "outcomes": ["failure"]}
    assert matches(f, _doc(action="invoice.paid", outcome="failure"))
    assert matches(f, _doc(action="user.login", outcome="failure"))
    assert not matches(f, _doc(action="user.login", outcome="success"))
    assert not matches(f, _doc(action="invoices.paid", outcome="failure"))
    assert matches(f, _doc(action="auditstream.event.erased", outcome="success"))
    assert matches(None, _doc())
    with pytest.raises(ValidationError):
        StreamFields.model_validate({"filters": {"actions": ["a b"]}})
    with pytest.raises(ValidationError):
        StreamFields.model_validate({"filters": {"outcomes": ["maybe"]}})


def test_streamed_event_is_the_original_and_a_tombstone_when_erased() -> None:
    corrected = _doc(corrections=[{"set": {"outcome": "failure"}, "previous": {}}])
    out = streamed_event(corrected)
    assert out["outcome"] == "success"  # the correction is its own event in the stream
    assert "corrections" not in out and "hash" not in out and "search" not in out
    assert out["idempotency_key"] == "e1" and out["seq"] == 1
    assert out["occurred_at"] == "2026-11-30T12:00:00Z"
    erased = _doc(erased={"event_id": "c1", "by": "admin", "at": NOW, "reason": "gdpr"})
    del erased["actor"]
    tomb = streamed_event(erased)
    assert set(tomb) == {
        "id",
        "tenant",
        "action",
        "occurred_at",
        "erased",
        "seq",
        "received_at",
        "idempotency_key",
    }
    assert tomb["erased"]["at"] == "2026-11-30T12:00:00Z"


def test_splunk_and_datadog_request_shapes() -> None:
    events = [streamed_event(_doc(1)), streamed_event(_doc(2, description="hello"))]
    h, body = build_request(_dest(kind="splunk_hec", index="main"), events, NOW)
    assert h["Authorization"] == "Splunk s-current"
    lines = [orjson.loads(line) for line in body.split(b"\n")]
    assert [x["event"]["seq"] for x in lines] == [1, 2]
    assert lines[0]["time"] == NOW.timestamp() and lines[0]["index"] == "main"
    h, body = build_request(_dest(kind="datadog", service="billing"), events, NOW)
    assert h["DD-API-KEY"] == "s-current"
    entries = orjson.loads(body)
    assert entries[1]["message"] == "hello" and entries[0]["message"] == "user.login"
    assert entries[0]["service"] == "billing" and entries[0]["timestamp"] == int(
        NOW.timestamp() * 1000
    )


def test_backoff_is_bounded_full_jitter() -> None:
    for attempt in range(40):
        d = backoff(attempt, 0.5, 60.0)
        assert 0 <= d <= min(60.0, 0.5 * 2**attempt)


def test_destination_urls() -> None:
    kw = {"allow_private": False, "allow_http": False}
    assert url_problem("http://example.com/", "webhook", **kw) == "url must use https"
    assert url_problem("ftp://example.com/", "webhook", **kw)
    assert url_problem("https://u:p@example.com/", "webhook", **kw)
    assert "non-public" in (url_problem("https://127.0.0.1:9/", "webhook", **kw) or "")
    assert "non-public" in (url_problem("https://[::1]/", "webhook", **kw) or "")
    assert "non-public" in (url_problem("https://10.1.2.3/", "webhook", **kw) or "")
    assert "non-public" in (url_problem("https://169.254.169.254/", "webhook", **kw) or "")
    assert (
        url_problem("https://127.0.0.1:9/", "webhook", allow_private=True, allow_http=False) is None
    )
    with pytest.raises(ValidationError):
        StreamCreate.model_validate({"kind": "webhook", "name": "x", "secret": "short"})


def test_syslog_message_rfc5424_and_octet_counting() -> None:
    from stream_processor.streams.formats import syslog_frames, syslog_message

    dest = {"tenant": 'a"c]m\\e', "kind": "syslog"}
    ev = streamed_event(_doc(7, outcome="denied", action="weird action ü"))
    msg = syslog_message(dest, ev)
    head, _, body = msg.partition(b"\xef\xbb\xbf")
    assert head.startswith(b"<108>1 2026-11-30T12:00:00Z ")
    assert b" auditstream - weird_action__ " in head
    assert b'[auditstream@32473 tenant="a\\"c\\]m\\\\e" id="e7" seq="7"] ' in head
    assert orjson.loads(body)["seq"] == 7
    frames = syslog_frames(dest, [ev, ev])
    length, _, rest = frames.partition(b" ")
    assert rest[: int(length)] == msg and rest[int(length) :].startswith(length + b" ")
    with pytest.raises(ValidationError):  # webhook/Splunk/Datadog need a secret, syslog not
        StreamCreate.model_validate({"kind": "webhook", "name": "x"})
    StreamCreate.model_validate({"kind": "syslog", "name": "x", "url": "syslog+tls://h:6514"})
    kw = {"allow_private": True, "allow_http": False}
    assert url_problem("syslog+tls://127.0.0.1:6514", "syslog", **kw) is None
    assert url_problem("syslog+tls://127.0.0.1", "syslog", **kw)
    assert url_problem("https://127.0.0.1:6514", "syslog", **kw)


@pytest.mark.parametrize(
    "url", ["https://[::1", "https://h:99999/", "https://" + "a" * 70 + ".com/", "https://\x00/"]
)
def test_malformed_urls_are_a_problem_not_an_exception(url: str) -> None:
    assert url_problem(url, "webhook", allow_private=False, allow_http=False)


def test_s3_destination_urls_fields_and_object_layout() -> None:
    from audit_events.streams import s3_target
    from stream_processor.streams.formats import ndjson_body, s3_key

    aws = s3_target("s3://audit-lake/prod/streams")
    assert (aws.bucket, aws.prefix, aws.endpoint) == ("audit-lake", "prod/streams", None)
    minio = s3_target("s3+https://minio.example.com:9000/audit-lake/x/")
    assert (minio.bucket, minio.prefix, minio.endpoint) == (
        "audit-lake",
        "x",
        "https://minio.example.com:9000",
    )
    for bad in (
        "https://audit-lake/x",  # not an s3 url
        "s3://Bad_Bucket/x",
        "s3://ab/x",  # too short a bucket name
        "s3://audit-lake/a/../b",
        "s3://audit-lake/a?x=1",
        "s3+https://key:secret@minio.example.com/audit-lake",
    ):
        with pytest.raises(ValueError):
            s3_target(bad)
        assert url_problem(bad, "s3", allow_private=True, allow_http=True) is not None
    assert url_problem("s3://audit-lake/x", "s3", allow_private=False, allow_http=False) is None
    http = "s3+http://minio.example.com/audit-lake"
    assert "s3+https" in str(url_problem(http, "s3", allow_private=True, allow_http=False))
    assert url_problem(http, "s3", allow_private=True, allow_http=True) is None
    local = "s3+https://127.0.0.1:9000/audit-lake"
    assert "non-public" in str(url_problem(local, "s3", allow_private=False, allow_http=False))
    # credentials of the tenant's own, never the deployment's ambient ones
    base = {"kind": "s3", "name": "lake", "url": "s3://audit-lake/x", "secret": "s" * 40}
    with pytest.raises(ValidationError, match="access_key_id"):
        StreamCreate.model_validate(base)
    with pytest.raises(ValidationError, match="region"):
        StreamCreate.model_validate({**base, "access_key_id": "AKIA1234", "region": "EU 1"})
    ok = StreamCreate.model_validate({**base, "access_key_id": "AKIA1234", "region": "eu-west-1"})
    view = stream_view({"_id": "st_1", "tenant": "acme", **ok.model_dump(), "created_at": NOW})
    assert view["access_key_id"] == "AKIA1234" and "s" * 40 not in orjson.dumps(view).decode()
    events = [{"seq": 7, "id": "a"}, {"seq": 9, "id": "b"}]
    assert s3_key({"tenant": "acme"}, events) == "acme/000000000007-000000000009.ndjson"
    body = ndjson_body(events)
    assert body.endswith(b"\n") and [orjson.loads(x)["id"] for x in body.splitlines()] == [
        "a",
        "b",
    ]
