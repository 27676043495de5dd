"""The on-disk spool: FIFO order, head insertion, bounds, durability across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers import Spool, SpoolFull

pytestmark = pytest.mark.unit


def msgs(*names: str) -> list[tuple[bytes, bytes]]:
    return [(b"k", n.encode()) for n in names]


def values(spool: Spool, limit: int = 100) -> list[bytes]:
    return [v for _, _, v in spool.peek(limit)]


def test_fifo_prepend_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_events=100, max_bytes=10_000)
    spool.append(msgs("c", "d"))
    spool.prepend(msgs("a", "b"))
    spool.append(msgs("e"))
    assert values(spool) == [b"a", b"b", b"c", b"d", b"e"]
    assert (spool.events, spool.size_bytes) == (5, 5)
    rows = spool.peek(2)
    spool.remove_through(rows[-1][0])
    assert values(spool) == [b"c", b"d", b"e"] and len(spool) == 3
    spool.close()


def test_bounds_raise_and_store_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_events=3, max_bytes=5)
    spool.append(msgs("aa", "bb"))
    with pytest.raises(SpoolFull, match="full"):
        spool.append(msgs("c", "d"))  # 4 events > 3
    with pytest.raises(SpoolFull):
        spool.prepend(msgs("ccc"))  # 7 bytes > 5
    assert values(spool) == [b"aa", b"bb"]
    spool.close()


def test_contents_survive_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_events=10, max_bytes=100)
    spool.append(msgs("x", "y"))
    spool.close()
    again = Spool(tmp_path / "s.db", max_events=10, max_bytes=100)
    assert values(again) == [b"x", b"y"] and again.events == 2 and again.size_bytes == 2
    again.close()
