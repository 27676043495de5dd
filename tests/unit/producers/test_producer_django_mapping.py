"""django-easy-audit records → event dicts (pure mapping, no Django needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from producers import build_event
from producers.django_mapping import crud_event, login_event, request_event

pytestmark = pytest.mark.unit
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_update_becomes_changes_actor_and_target() -> None:
    info = {
        "event_type": 2,
        "object_id": 7,
        "object_repr": "Invoice INV-7",
        "changed_fields": json.dumps({"total": ["10", "12"], "password": ["a", "b"]}),
        "user_id": 3,
        "datetime": WHEN,
    }
    event = crud_event(
        info, tenant="acme", model_label="shop.invoice", actor={"id": "3", "name": "bob"}
    )
    ev = build_event(event)
    assert ev.action == "shop.invoice.update" and ev.crud == "u" and ev.occurred_at == WHEN
    assert {k: (c.old, c.new) for k, c in ev.changes.items()} == {
        "total": ("10", "12"),
        "password": ("[redacted]", "[redacted]"),
    }
    assert ev.actor is not None and (ev.actor.id, ev.actor.name) == ("3", "bob")
    assert [(t.type, t.id, t.name) for t in ev.targets] == [("shop.invoice", "7", "Invoice INV-7")]


def test_create_and_delete_carry_the_fields() -> None:
    repr_ = json.dumps([{"model": "shop.invoice", "pk": 1, "fields": {"total": 5, "note": None}}])
    created = build_event(
        crud_event({"event_type": 1, "object_id": 1, "object_json_repr": repr_},
                   tenant="acme", model_label="shop.invoice")
    )  # fmt: skip
    deleted = build_event(
        crud_event({"event_type": 3, "object_id": 1, "object_json_repr": repr_},
                   tenant="acme", model_label="shop.invoice")
    )  # fmt: skip
    assert {k: (c.old, c.new) for k, c in created.changes.items()} == {"total": (None, 5)}
    assert (created.action, created.crud) == ("shop.invoice.create", "c")
    assert {k: (c.old, c.new) for k, c in deleted.changes.items()} == {"total": (5, None)}
    assert deleted.crud == "d" and deleted.actor is None


def test_m2m_goes_to_metadata() -> None:
    info = {"event_type": 6, "object_id": 1, "changed_fields": json.dumps({"groups": [4, 5]})}
    ev = build_event(crud_event(info, tenant="acme", model_label="auth.user"))
    assert ev.action == "auth.user.m2m_add" and ev.metadata["m2m"] == {"groups": [4, 5]}


def test_login_failed_and_request() -> None:
    failed = build_event(
        login_event({"login_type": 2, "username": "eve", "remote_ip": "10.0.0.9"}, tenant="acme")
    )
    assert (failed.action, failed.outcome) == ("auth.login_failed", "failure")
    assert failed.actor is not None and failed.actor.id == "eve"
    assert failed.context is not None and failed.context.ip == "10.0.0.9"
    req = build_event(
        request_event(
            {"url": "/x/", "method": "get", "query_string": b"a=1", "remote_ip": "::1"},
            tenant="acme",
        )
    )
    assert req.action == "http.get" and req.metadata["query_string"] == "a=1"
    assert [t.id for t in req.targets] == ["/x/"]


def test_logins_carry_pk_and_username_alike() -> None:
    """Failed and successful logins of one user share actor id (pk) and name (username),
    so filtering by either finds both; an unknown username keeps the username as id."""
    ok = build_event(login_event({"login_type": 0, "username": "bob", "user_id": 3}, tenant="acme"))
    failed = build_event(
        login_event({"login_type": 2, "username": "bob"}, tenant="acme", user_pk=3)
    )
    unknown = build_event(login_event({"login_type": 2, "username": "mallory"}, tenant="acme"))
    for ev in (ok, failed):
        assert ev.actor is not None and (ev.actor.id, ev.actor.name) == ("3", "bob")
        assert [(t.id, t.name) for t in ev.targets] == [("3", "bob")]
    assert unknown.actor is not None and (unknown.actor.id, unknown.actor.name) == (
        "mallory",
        "mallory",
    )
    assert unknown.metadata["unknown_user"] is True


def test_foreign_keys_get_the_related_objects_name_beside_the_pk() -> None:
    info = {"event_type": 2, "object_id": 1, "changed_fields": json.dumps({"invoice": ["1", "2"]})}
    event = crud_event(
        info,
        tenant="acme",
        model_label="shop.payment",
        related={"invoice": {"old": "Invoice INV-1", "new": "Invoice INV-2"}},
    )
    ev = build_event(event)
    assert {k: (c.old, c.new) for k, c in ev.changes.items()} == {
        "invoice": ("1", "2"),
        "invoice__str": ("Invoice INV-1", "Invoice INV-2"),
    }
    repr_ = json.dumps([{"model": "shop.payment", "pk": 1, "fields": {"invoice": 1}}])
    created = build_event(
        crud_event(
            {"event_type": 1, "object_id": 1, "object_json_repr": repr_},
            tenant="acme",
            model_label="shop.payment",
            related={"invoice": {"new": "Invoice INV-1"}},
        )
    )
    assert created.changes["invoice__str"].new == "Invoice INV-1"


def test_a_float_field_holding_nan_or_infinity_is_recorded_as_text() -> None:
    # Django serialises them as NaN/Infinity (not JSON); the schema refuses non-finite
    # numbers, so the record would be dropped (logged) instead of recorded.
    fields = '{"ratio": NaN, "max": Infinity, "min": -Infinity, "big": 1e999, "x": 1.5}'
    repr_ = '[{"model": "shop.invoice", "pk": 1, "fields": ' + fields + "}]"
    created = build_event(
        crud_event({"event_type": 1, "object_id": 1, "object_json_repr": repr_},
                   tenant="acme", model_label="shop.invoice")
    )  # fmt: skip
    assert {k: c.new for k, c in created.changes.items()} == {
        "ratio": "NaN",
        "max": "Infinity",
        "min": "-Infinity",
        "big": "1e999",
        "x": 1.5,
    }
    changed = json.dumps({"ratio": [float("nan"), 0.5]})  # json.dumps writes NaN too
    updated = build_event(
        crud_event({"event_type": 2, "object_id": 1, "changed_fields": changed},
                   tenant="acme", model_label="shop.invoice")
    )  # fmt: skip
    assert (updated.changes["ratio"].old, updated.changes["ratio"].new) == ("NaN", 0.5)
