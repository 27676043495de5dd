"""CSV export cells: column order, nested values, and formula-injection escaping."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
import pytest

from query_api.export import (
    CSV_COLUMNS,
    CsvChunker,
    csv_row,
    export_view,
    ndjson_line,
    spreadsheet_safe,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+2", "'+1+2"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("invoice.update", "invoice.update"),
        ("a=b", "a=b"),
        ("", ""),
        ("'quoted", "'quoted"),
    ],
)
def test_spreadsheet_safe(cell: str, expected: str) -> None:
    assert spreadsheet_safe(cell) == expected


FULL: dict[str, Any] = {
    "id": "evt-1",
    "seq": 7,
    "occurred_at": "2026-03-01T12:00:00Z",
    "received_at": "2026-03-01T12:00:01.5Z",
    "tenant": "acme",
    "action": "invoice.update",
    "crud": "u",
    "outcome": "success",
    "actor": {"id": "alice", "type": "user", "name": "Alice"},
    "targets": [{"type": "invoice", "id": "42", "name": "Invoice 42"}, {"type": "org", "id": "o"}],
    "description": "=cmd|' /C calc'!A0",
    "changes": {"total": {"old": 10, "new": 12}},
    "source": {"service": "billing", "component": "api", "version": "1.2"},
    "context": {"ip": "10.0.0.1", "user_agent": "curl", "request_id": "r", "trace_id": "t"},
    "metadata": {"b": 1, "a": [True, None]},
    "content_hash": "c" * 64,
    "hash": "h" * 64,
}


def test_csv_row_follows_the_documented_columns() -> None:
    row = dict(zip(CSV_COLUMNS, csv_row(FULL), strict=True))
    assert row == {
        "id": "evt-1",
        "seq": "7",
        "occurred_at": "2026-03-01T12:00:00Z",
        "received_at": "2026-03-01T12:00:01.5Z",
        "tenant": "acme",
        "action": "invoice.update",
        "crud": "u",
        "outcome": "success",
        "actor_id": "alice",
        "actor_type": "user",
        "actor_name": "Alice",
        "target_type": "invoice",
        "target_id": "42",
        "target_name": "Invoice 42",
        "targets": '[{"id":"42","name":"Invoice 42","type":"invoice"},{"id":"o","type":"org"}]',
        "description": "'=cmd|' /C calc'!A0",
        "changes": '{"total":{"new":12,"old":10}}',
        "source_service": "billing",
        "source_component": "api",
        "source_version": "1.2",
        "ip": "10.0.0.1",
        "user_agent": "curl",
        "request_id": "r",
        "trace_id": "t",
        "metadata": '{"a":[true,null],"b":1}',
        "content_hash": "c" * 64,
        "hash": "h" * 64,
    }


def test_minimal_event_leaves_absent_fields_empty() -> None:
    row = dict(zip(CSV_COLUMNS, csv_row({"id": "e", "tenant": "t", "action": "a"}), strict=True))
    assert row["id"] == "e" and row["action"] == "a"
    assert {k for k, v in row.items() if v} == {"id", "tenant", "action"}


def test_every_text_column_is_escaped() -> None:
    hostile = {
        "id": "e",
        "action": "a",
        "actor": {"id": "+alice", "name": "@bob", "type": "-u"},
        "targets": [{"type": "=t", "id": "\t1"}],
        "source": {"service": "=svc"},
        "context": {"user_agent": "=ua"},
    }
    row = dict(zip(CSV_COLUMNS, csv_row(hostile), strict=True))
    for name in ("actor_id", "actor_name", "actor_type", "target_type", "target_id"):
        assert row[name].startswith("'"), name
    assert row["source_service"] == "'=svc" and row["user_agent"] == "'=ua"


def test_chunker_writes_rfc4180_that_parses_back() -> None:
    chunker = CsvChunker()
    chunker.header()
    chunker.add({**FULL, "description": 'line one\nsays "hi", twice'})
    first = chunker.take()
    assert first.startswith(b"id,seq,occurred_at,")
    assert b"\r\n" in first
    assert chunker.take() == b""
    rows = list(csv.reader(io.StringIO(first.decode(), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1][CSV_COLUMNS.index("description")] == 'line one\nsays "hi", twice'


def test_ndjson_line_is_one_json_object() -> None:
    line = ndjson_line(FULL)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == FULL


def test_an_erased_event_exports_as_a_tombstone_and_csv_gets_an_erased_column() -> None:
    stored = {
        "_id": "acme/e1",
        "id": "e1",
        "tenant": "acme",
        "action": "user.login",
        "seq": 4,
        "content_hash": "a" * 64,
        "hash": "b" * 64,
        "source": {"service": "auth"},  # left by the erasure; not exported
        "erased": {"event_id": "x1", "by": "admin", "at": "2026-01-01T00:00:00Z", "reason": "r"},
    }
    view = export_view(stored)
    assert set(view) == {"id", "tenant", "seq", "action", "content_hash", "hash", "erased"}
    assert view["id"] == "e1"
    chunker = CsvChunker(erased_column=True)
    chunker.header()
    chunker.add(view)
    chunker.add(FULL)
    header, tomb, plain = list(csv.reader(io.StringIO(chunker.take().decode(), newline="")))
    assert header == [*CSV_COLUMNS, "erased"]
    cells = dict(zip(header, tomb, strict=True))
    assert orjson.loads(cells["erased"])["reason"] == "r" and cells["actor_id"] == ""
    assert cells["seq"] == "4" and cells["source_service"] == ""
    assert plain[-1] == ""  # an event that is not erased
