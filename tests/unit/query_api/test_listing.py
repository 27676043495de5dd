"""The window schedule of query_api/listing.py: pure, no store."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.datastructures import MultiDict

from audit_events.store_adapter import MONGODB, SECANTUSDB
from query_api.listing import (
    FIRST_WINDOW,
    GROWTH,
    OVERSAMPLE,
    WINDOW_EVENTS,
    boundaries,
    keyset_range,
    read_page,
    sample_seqs,
    time_windows,
    windows,
)
from query_api.query import encode_cursor, parse_list_query

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
    gen = windows(q(), NOW, [newest])
    next(gen)
    second = gen.send(0.0)  # the first window was empty
    assert second["$gt"] < newest - FIRST_WINDOW + timedelta(seconds=1)
    assert second["$gt"] > newest - 2 * FIRST_WINDOW
    third = gen.send(0.0)  # no hint below it: plain growth
    assert third["$lt"] == second["$gt"] + timedelta(milliseconds=1)


def test_after_the_jump_widening_starts_from_the_data_not_the_gap() -> None:
    newest = NOW - timedelta(days=200)
    gen = windows(q(), NOW, [newest])
    next(gen)
    jump = gen.send(0.0)
    after = gen.send(2.0)  # the jump held half a page: twice its populated part
    lower = jump["$gt"] + timedelta(milliseconds=1)
    assert after["$gt"] + timedelta(milliseconds=1) == lower - 2 * FIRST_WINDOW


def test_empty_windows_reach_the_nearest_hint_beyond_them_both_ways() -> None:
    older, newer = NOW - timedelta(days=300), NOW - timedelta(days=200)
    ms = timedelta(milliseconds=1)
    gen = windows(q(), NOW, [older, newer])
    first = next(gen)
    jump = gen.send(0.0)  # empty: down to the newest hint below it
    assert jump["$lt"] == first["$gt"] + ms and jump["$gt"] == newer - FIRST_WINDOW - ms
    again = gen.send(0.0)  # that was empty too: on past the next hint, still widening
    assert again["$lt"] == jump["$gt"] + ms and again["$gt"] < older - FIRST_WINDOW
    since = NOW - timedelta(days=400)
    gen = windows(q(order="asc", since=since.isoformat()), NOW, [older, newer])
    start = next(gen)
    up = gen.send(0.0)  # empty: up to the oldest hint above it
    assert up["$gt"] == start["$lt"] - ms and up["$lt"] == older + FIRST_WINDOW
    after = gen.send(2.0)  # it held half a page: from the data, not the gap
    assert after["$gt"] == up["$lt"] - ms and after["$lt"] == up["$lt"] + 2 * FIRST_WINDOW


# --- the store-capability seam and the export windows ---------------------------


def test_keyset_range_is_the_whole_page_range() -> None:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    cursor = encode_cursor(at, "acme/x")
    since, until = "2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z"
    assert keyset_range(q()) == {}
    assert keyset_range(q(cursor=cursor)) == {"$lte": at}
    desc = keyset_range(q(cursor=cursor, since=since, until=until))
    assert desc["$lte"] == at and desc["$gt"] < datetime(2026, 1, 1, tzinfo=UTC)
    asc = keyset_range(q(order="asc", cursor=cursor, until=until))
    assert asc["$gt"] == at - timedelta(milliseconds=1)
    assert asc["$lt"] == datetime(2026, 6, 1, tzinfo=UTC)
    assert "$gte" not in str([desc, asc])


class _OneRange:
    """A collection that records its finds and answers nothing."""

    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def find(self, where: dict[str, Any], *args: Any) -> _OneRange:
        self.finds.append(where)
        return self

    def sort(self, *args: Any) -> _OneRange:
        return self

    def batch_size(self, n: int) -> _OneRange:
        return self

    async def list_indexes(self) -> _OneRange:
        return self  # no index at all: no chain head to probe

    def __aiter__(self) -> _OneRange:
        return self

    async def __anext__(self) -> dict[str, Any]:
        raise StopAsyncIteration

    async def close(self) -> None:
        return None


async def test_mongodb_reads_one_keyset_range_secantusdb_windows() -> None:
    plain, windowed = _OneRange(), _OneRange()
    query = q(since="2020-01-01T00:00:00Z")
    assert await read_page(plain, "acme", query, False, MONGODB) == []
    assert len(plain.finds) == 1 and plain.finds[0]["occurred_at"] == keyset_range(query)
    assert await read_page(windowed, "acme", query, False, SECANTUSDB) == []
    assert len(windowed.finds) > 5  # widening windows down to since


def test_sample_seqs_are_spread_evenly_along_the_chain() -> None:
    assert sample_seqs(1, WINDOW_EVENTS) == []  # one window: no samples
    seqs = sample_seqs(1, 100 * WINDOW_EVENTS)
    assert len(seqs) == 100 * OVERSAMPLE and seqs == sorted(set(seqs))
    assert seqs[0] > 1 and seqs[-1] < 100 * WINDOW_EVENTS
    gaps = {b - a for a, b in itertools.pairwise(seqs)}
    assert max(gaps) - min(gaps) <= 1
    after_purge = sample_seqs(5001, 5000 + 10 * WINDOW_EVENTS)
    assert after_purge[0] > 5000


def test_time_windows_tile_the_range_in_order() -> None:
    times = [datetime(2026, 1, d, tzinfo=UTC) for d in (9, 3, 3, 5, 1, 7, 2, 8, 4, 6, 3, 1)]
    cuts = boundaries(times)
    assert cuts == sorted(set(cuts)) and 0 < len(cuts) <= len(times) // OVERSAMPLE + 1
    asc = time_windows(q(order="asc"), cuts)
    assert asc[0][0] is None and asc[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(asc))  # adjacent, no overlap
    assert time_windows(q(), cuts) == asc[::-1]  # desc: newest window first
    since, until = datetime(2026, 1, 4, tzinfo=UTC), datetime(2026, 1, 6, tzinfo=UTC)
    clipped = time_windows(q(since=since.isoformat(), until=until.isoformat()), cuts)
    assert clipped[0][1] == until and clipped[-1][0] == since
    assert all(since <= lo and hi <= until for lo, hi in clipped if lo and hi)


def test_asc_without_a_start_is_anchored_at_the_oldest_hint() -> None:
    oldest = datetime(2025, 3, 7, tzinfo=UTC)
    gen = windows(q(order="asc"), NOW, oldest=oldest)
    assert next(gen) == {"$lt": oldest}  # everything below the hint
    second = gen.send(0.0)
    assert second["$gt"] == oldest - timedelta(milliseconds=1)  # then from it, upward
    assert second["$lt"] == oldest + FIRST_WINDOW * GROWTH
    rest = list(gen)
    assert rest[-1].keys() == {"$gt"}  # open-ended above
    until = oldest - timedelta(days=1)  # the hint above until: one range below until
    assert list(windows(q(order="asc", until=until.isoformat()), NOW, oldest=oldest)) == [
        {"$lt": until}
    ]
