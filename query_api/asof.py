"""An object's field values at a time (``?as_of=``), folded from its events — pure.

django-simple-history's ``as_of``: the events of one object, oldest first,
folded field by field (rules on :class:`AsOfFolder`). No I/O: the store feeds it
(``query_api/store.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def iso_z(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class KnownValue:
    """A field's value at ``as_of`` and the event it is known from."""

    value: Any
    event_id: str
    occurred_at: datetime
    inferred: bool  # True: the ``old`` side of the first change after ``as_of``

    def to_api(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "event_id": self.event_id,
            "occurred_at": iso_z(self.occurred_at),
            "inferred": self.inferred,
        }


@dataclass
class AsOfFolder:
    """Folds one object's events, fed oldest first, into its field values at ``as_of``.

    Rules (what a reader of an audit log would expect):

    - only successful events change state: a ``denied`` or ``failure`` update did
      not happen, so its ``changes`` are ignored (counted in ``events_skipped``);
    - for events at or before ``as_of`` a field takes the ``new`` side of its last
      change; a creation (``crud`` ``c``) forgets what came before it;
    - a field never changed by ``as_of`` but changed later had, at ``as_of``, the
      ``old`` side of its first later change (marked ``inferred``) — unless the
      object was deleted at ``as_of`` or (re)created after it (``crud`` ``c``),
      when earlier values say nothing about it;
    - ``deleted`` is true when the last successful event at or before ``as_of``
      with a ``crud`` of ``c`` or ``d`` was a ``d``.

    ``add`` raises :class:`ValueError` when events arrive out of order.
    """

    as_of: datetime
    fields: dict[str, KnownValue] = field(default_factory=dict)
    later: dict[str, KnownValue] = field(default_factory=dict)
    events_applied: int = 0
    events_skipped: int = 0
    last_event_id: str | None = None
    deleted: bool = False
    _recreated_after: bool = False
    _last_key: tuple[datetime, str] | None = None

    def add(self, event: dict[str, Any]) -> None:
        """Fold one stored document or API event (both carry the client id in ``id``)."""
        when: datetime = event["occurred_at"]
        event_id: str = event["id"] if "id" in event else event["_id"]  # old layout: _id
        key = (when, event_id)
        if self._last_key is not None and key < self._last_key:
            raise ValueError(f"event {event_id} is older than the previous one")
        self._last_key = key
        if event.get("outcome", "success") != "success":
            if when <= self.as_of:
                self.events_skipped += 1
            return
        changes: dict[str, dict[str, Any]] = event.get("changes") or {}
        crud = event.get("crud")
        if when <= self.as_of:
            self.events_applied += 1
            self.last_event_id = event_id
            if crud == "c":  # a (re)creation starts from a clean slate
                self.fields.clear()
            for name, change in changes.items():
                self.fields[name] = KnownValue(change.get("new"), event_id, when, False)
            if crud in ("c", "d"):
                self.deleted = crud == "d"
            return
        if self.deleted or self._recreated_after:
            return
        if crud == "c":
            self._recreated_after = True
            return
        for name, change in changes.items():
            if name not in self.fields and name not in self.later:
                self.later[name] = KnownValue(change.get("old"), event_id, when, True)

    def known(self) -> dict[str, KnownValue]:
        """Every field whose value at ``as_of`` is known, sorted by name."""
        merged = {**self.later, **self.fields}
        return {name: merged[name] for name in sorted(merged)}

    def result(self, target_type: str, target_id: str) -> dict[str, Any]:
        known = self.known()
        return {
            "target": {"type": target_type, "id": target_id},
            "as_of": iso_z(self.as_of),
            "state": {name: v.value for name, v in known.items()},
            "fields": {name: v.to_api() for name, v in known.items()},
            "events_applied": self.events_applied,
            "events_skipped": self.events_skipped,
            "last_event_id": self.last_event_id,
            "deleted": self.deleted,
        }


def fold_as_of(
    events: list[dict[str, Any]], as_of: datetime, target_type: str, target_id: str
) -> dict[str, Any]:
    """The object's state at ``as_of`` from its events (any order; sorted here)."""
    folder = AsOfFolder(as_of)
    for event in sorted(events, key=lambda e: (e["occurred_at"], e.get("id", e.get("_id")))):
        folder.add(event)
    return folder.result(target_type, target_id)
