"""Folding an object's field diffs into its state ``as_of`` a time (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from query_api.history import AsOfFolder, fold_as_of

pytestmark = pytest.mark.unit


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def ev(
    event_id: str, day: int, changes: dict[str, tuple[Any, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "_id": event_id,
        "occurred_at": at(day),
        "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
        **extra,
    }


INVOICE = [
    ev("e1", 1, {"status": (None, "draft"), "total": (None, 10)}, crud="c"),
    ev("e2", 3, {"total": (10, 12)}, crud="u"),
    ev("e3", 5, {"status": ("draft", "paid")}, crud="u"),
    ev("e4", 7, {}, crud="d"),
]


def test_state_takes_the_last_new_value_at_or_before_as_of() -> None:
    got = fold_as_of(INVOICE, at(4), "invoice", "42")
    assert got["state"] == {"status": "draft", "total": 12}
    assert got["fields"]["total"] == {
        "value": 12,
        "event_id": "e2",
        "occurred_at": "2026-03-03T12:00:00Z",
        "inferred": False,
    }
    assert got["events_applied"] == 2
    assert got["last_event_id"] == "e2"
    assert got["deleted"] is False
    assert got["target"] == {"type": "invoice", "id": "42"}
    assert got["as_of"] == "2026-03-04T12:00:00Z"


def test_an_event_exactly_at_as_of_is_included() -> None:
    got = fold_as_of(INVOICE, at(5), "invoice", "42")
    assert got["state"] == {"status": "paid", "total": 12}
    assert got["last_event_id"] == "e3"


def test_before_the_first_event_nothing_is_known() -> None:
    got = fold_as_of(INVOICE, at(1, 0), "invoice", "42")
    # e1 created the object: what came before says nothing about it.
    assert got["state"] == {}
    assert got["events_applied"] == 0
    assert got["last_event_id"] is None


def test_after_deletion_the_last_values_remain_and_deleted_is_set() -> None:
    got = fold_as_of(INVOICE, at(9), "invoice", "42")
    assert got["state"] == {"status": "paid", "total": 12}
    assert got["deleted"] is True
    assert got["events_applied"] == 4


def test_unchanged_fields_are_inferred_from_the_old_side_of_the_next_change() -> None:
    # History starts mid-life: no creation event was ever audited.
    events = [
        ev("a", 2, {"email": ("a@x.io", "b@x.io")}),
        ev("b", 4, {"plan": ("free", "pro"), "email": ("b@x.io", "c@x.io")}),
    ]
    got = fold_as_of(events, at(3), "user", "u1")
    assert got["state"] == {"email": "b@x.io", "plan": "free"}
    assert got["fields"]["plan"]["inferred"] is True
    assert got["fields"]["plan"]["event_id"] == "b"
    assert got["fields"]["email"]["inferred"] is False
    before_all = fold_as_of(events, at(1), "user", "u1")
    assert before_all["state"] == {"email": "a@x.io", "plan": "free"}


def test_no_inference_across_a_later_recreation() -> None:
    events = [
        ev("a", 2, {"name": ("x", "y")}),
        ev("b", 3, {}, crud="d"),
        ev("c", 5, {"colour": (None, "red")}, crud="c"),
        ev("d", 6, {"size": ("s", "m")}),
    ]
    assert fold_as_of(events, at(2), "thing", "1")["state"] == {"name": "y"}
    deleted = fold_as_of(events, at(4), "thing", "1")
    assert deleted["state"] == {"name": "y"} and deleted["deleted"] is True
    # Recreated at day 5: the old name belongs to the previous life.
    assert fold_as_of(events, at(5), "thing", "1")["state"] == {"colour": "red", "size": "s"}


def test_failed_and_denied_events_change_nothing() -> None:
    events = [
        ev("a", 1, {"role": (None, "viewer")}),
        ev("b", 2, {"role": ("viewer", "admin")}, outcome="denied"),
        ev("c", 3, {"role": ("viewer", "owner")}, outcome="failure"),
    ]
    got = fold_as_of(events, at(4), "membership", "m")
    assert got["state"] == {"role": "viewer"}
    assert got["events_applied"] == 1
    assert got["events_skipped"] == 2


def test_a_change_to_null_is_a_known_null() -> None:
    events = [ev("a", 1, {"note": (None, "hi")}), ev("b", 2, {"note": ("hi", None)})]
    assert fold_as_of(events, at(3), "doc", "d")["state"] == {"note": None}


def test_same_time_events_fold_in_id_order() -> None:
    events = [ev("b", 1, {"v": (1, 2)}), ev("a", 1, {"v": (0, 1)})]
    got = fold_as_of(events, at(1), "counter", "c")
    assert got["state"] == {"v": 2}
    assert got["last_event_id"] == "b"


def test_folder_refuses_events_out_of_order() -> None:
    folder = AsOfFolder(at(9))
    folder.add(ev("b", 2, {}))
    with pytest.raises(ValueError, match="older"):
        folder.add(ev("a", 1, {}))


def test_api_form_events_are_accepted_too() -> None:
    folder = AsOfFolder(at(9))
    folder.add({"id": "x", "occurred_at": at(1), "changes": {"k": {"old": 1, "new": 2}}})
    assert folder.result("t", "i")["state"] == {"k": 2}
