"""The window schedule of query_api/listing.py: pure, no store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from werkzeug.datastructures import MultiDict

from query_api.listing import FIRST_WINDOW, GROWTH, windows
from query_api.query import parse_list_query

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def q(**params: str):  # type: ignore[no-untyped-def]
    return parse_list_query(MultiDict(params))


def test_desc_windows_are_disjoint_widen_and_end_open() -> None:
    ranges = list(windows(q(), NOW))
    assert "$lt" not in ranges[0] and ranges[0]["$gt"] < NOW - FIRST_WINDOW
    assert ranges[1]["$lt"] == NOW - FIRST_WINDOW
    assert ranges[1]["$gt"] < NOW - FIRST_WINDOW - FIRST_WINDOW * GROWTH
    assert ranges[-1].keys() == {"$lt"}  # open-ended below
    assert "$gte" not in str(ranges)  # never $gte (the stand-in's bug)


def test_density_factor_widens_the_next_window() -> None:
    gen = windows(q(), NOW)
    next(gen)
    second = gen.send(64.0)
    assert second["$gt"] < NOW - FIRST_WINDOW * 65


@pytest.mark.parametrize(
    "params",
    [
        {"until": "0001-01-01T00:05:00Z"},
        {"order": "asc", "since": "9999-12-31T23:00:00Z"},
        {"since": "2026-11-29T23:59:30Z"},
        {"order": "asc", "since": "2026-01-01T00:00:00Z", "until": "2026-01-01T00:00:30Z"},
    ],
)
def test_calendar_edges_and_bounds_end_without_overflow(params: dict[str, str]) -> None:
    ranges = list(windows(q(**params), NOW))
    assert 1 <= len(ranges) <= 20


def test_asc_without_a_start_is_one_open_range() -> None:
    assert list(windows(q(order="asc"), NOW)) == [{}]
    assert windows(q(order="asc", since="2026-01-01T00:00:00Z"), NOW) is not None
    first = next(windows(q(order="asc", since="2026-01-01T00:00:00Z"), NOW))
    assert first["$lt"] == datetime(2026, 1, 1, tzinfo=UTC) + FIRST_WINDOW
    assert first["$gt"] == datetime(2026, 1, 1, tzinfo=UTC) - timedelta(milliseconds=1)


def test_after_an_empty_window_the_next_reaches_the_newest_seen_event() -> None:
    newest = NOW - timedelta(days=200)
    gen = windows(q(), NOW, newest)
    next(gen)
    second = gen.send(0.0)  # the first window was empty
    assert second["$gt"] < newest - FIRST_WINDOW + timedelta(seconds=1)
    assert second["$gt"] > newest - 2 * FIRST_WINDOW
    third = gen.send(0.0)  # the hint is used once: then plain growth
    assert third["$lt"] == second["$gt"] + timedelta(milliseconds=1)


def test_after_the_jump_widening_starts_from_the_data_not_the_gap() -> None:
    newest = NOW - timedelta(days=200)
    gen = windows(q(), NOW, newest)
    next(gen)
    jump = gen.send(0.0)
    after = gen.send(2.0)  # the jump held half a page: twice its populated part
    lower = jump["$gt"] + timedelta(milliseconds=1)
    assert after["$gt"] + timedelta(milliseconds=1) == lower - 2 * FIRST_WINDOW
