"""Pure parts of per-tenant retention (issue 16): the policy, the marker line, the
archived record's id (the same the processor stores)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from audit_events.retention import RetentionPolicy, describe_marker, marker_view
from audit_events.schema import DEFAULT_LIMITS
from stream_processor.decode import decode
from stream_processor.records import Record
from stream_processor.retention import _chunks, _older, _record_id

pytestmark = pytest.mark.unit


def test_policy_bounds() -> None:
    assert RetentionPolicy.model_validate({"days": None}).days is None
    assert RetentionPolicy.model_validate({"days": 30}).days == 30
    for bad in ({"days": 0}, {"days": -1}, {"days": 36501}, {"days": "x"}, {"weeks": 1}):
        with pytest.raises(ValidationError):
            RetentionPolicy.model_validate(bad)


def test_marker_line_and_view() -> None:
    marker = {
        "through_seq": 20,
        "hash": "ab" * 32,
        "purged_at": datetime(2026, 11, 30, 12, tzinfo=UTC),
        "received_before": datetime(2026, 11, 28, tzinfo=UTC),
        "segment": "segments/t/0/e0/0-99.ndjson.gz",
        "purged": 20,
    }
    line = (
        "events up to seq 20 purged on 2026-11-30,"
        " archived in segment segments/t/0/e0/0-99.ndjson.gz"
    )
    assert describe_marker(marker) == line
    view = marker_view(marker)
    assert view is not None and view["purged_at"] == "2026-11-30T12:00:00Z"
    assert describe_marker(view) == line  # the verify report carries the view
    assert marker_view(None) is None


def test_archived_record_id_is_the_stored_id() -> None:
    ts = 1_700_000_000_000
    with_id = Record("t", 3, 7, ts, b"acme", b'{"id": "e-1", "tenant": "acme", "action": "a.b"}')
    assert _record_id(with_id, "acme") == "e-1"
    assert _record_id(with_id, "globex") is None  # another tenant's
    without = Record("t", 3, 8, ts, b"acme", orjson.dumps({"tenant": "acme", "action": "a.b"}))
    stored = decode(without, DEFAULT_LIMITS, 1 << 20)
    assert isinstance(stored, dict) and _record_id(without, "acme") == stored["id"]
    assert _record_id(Record("t", 0, 1, ts, b"acme", b"not json"), "acme") is None
    assert _record_id(Record("t", 0, 1, ts, b"acme", None), "acme") is None


def test_age_by_received_at_and_chunks() -> None:
    cutoff = datetime(2026, 1, 2, tzinfo=UTC)
    assert _older({"received_at": datetime(2026, 1, 1, tzinfo=UTC)}, cutoff)
    assert _older({"received_at": datetime(2026, 1, 1)}, cutoff)  # naive: UTC
    assert not _older({"received_at": cutoff}, cutoff)
    assert not _older({}, cutoff)  # no received time: never purged
    assert list(_chunks(1, 12001)) == [(1, 5000), (5001, 10000), (10001, 12001)]
    assert list(_chunks(5, 4)) == []
