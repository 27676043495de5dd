"""List-query parsing: literal-only MongoDB filters, whatever the query string."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.datastructures import MultiDict

from query_api.problems import Problem
from query_api.query import decode_cursor, encode_cursor, mongo_filter, parse_list_query

pytestmark = pytest.mark.unit


def status(args: dict[str, Any] | list[tuple[str, str]]) -> int:
    try:
        parse_list_query(MultiDict(args))
    except Problem as exc:
        return exc.status
    return 200


@pytest.mark.parametrize(
    "args",
    [
        {"actor[$ne]": "x"},
        {"$where": "1"},
        {"actor.id": "a"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"order": "-1"},
        {"outcome": "maybe"},
        {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"},  # no offset
        {"action": ".*"},
        {"q": "$$$"},
        {"cursor": "%%%"},
        [("actor", "a"), ("actor", "b")],
    ],
)
def test_rejected(args: Any) -> None:
    assert status(args) == 400


def leaves(value: Any) -> list[Any]:
    """Every key in a filter document, recursively."""
    if isinstance(value, dict):
        return [k for k in value] + [x for v in value.values() for x in leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in leaves(v)]
    return []


def test_values_stay_literals() -> None:
    query = parse_list_query(
        MultiDict(
            {
                "actor": '{"$gt": ""}',
                "target_id": "$where",
                "source": "a.b",
                "q": "$ne Invoice-42",
                "action": "invoice.*",
            }
        )
    )
    f = mongo_filter("acme", query)
    assert f["tenant"] == "acme"
    assert f["actor.id"] == {"$eq": '{"$gt": ""}'}
    assert f["targets"] == {"$elemMatch": {"id": {"$eq": "$where"}}}
    assert f["source.service"] == {"$eq": "a.b"}
    assert f["search"] == {"$all": ["ne", "invoice", "42"]}
    assert f["action"] == {"$regex": "^invoice\\."}
    operators = {k for k in leaves(f) if k.startswith("$")}
    assert operators <= {"$eq", "$elemMatch", "$all", "$regex", "$exists", "$and", "$or"}


def test_cursor_round_trip_and_keyset_clause() -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    assert decode_cursor(encode_cursor(when, "id-1")) == (when, "id-1")
    q = parse_list_query(MultiDict({"cursor": encode_cursor(when, "id-1"), "order": "asc"}))
    clauses = mongo_filter("t", q)["$and"]
    assert {"occurred_at": {"$gte": when}} in clauses
    assert {
        "$or": [{"occurred_at": {"$gt": when}}, {"occurred_at": when, "_id": {"$gt": "id-1"}}]
    } in clauses
