"""django-easy-audit records → auditstream events (pure functions, no Django import).

django-easy-audit hands its logging backend three kinds of dicts (see
``easyaudit/signals/*.py``):

- ``crud``: ``event_type`` (1 create, 2 update, 3 delete, 4-11 many-to-many),
  ``object_id``, ``object_repr``, ``object_json_repr`` (Django's JSON serialisation),
  ``changed_fields`` (JSON ``{field: [old, new]}`` for updates), ``user_id``,
  ``user_pk_as_string``, ``content_type_id``, ``datetime``;
- ``login``: ``login_type`` (0 login, 1 logout, 2 failed), ``username``,
  ``user_id``, ``remote_ip``;
- ``request``: ``url``, ``method``, ``query_string``, ``user_id``, ``remote_ip``,
  ``datetime``.

The backend resolves what needs Django (model label, user name, request context) and
passes it in; these functions only build the event dicts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

CRUD_VERBS: dict[int, tuple[str, str]] = {
    1: ("create", "c"),
    2: ("update", "u"),
    3: ("delete", "d"),
    4: ("m2m_change", "u"),
    5: ("m2m_change_reverse", "u"),
    6: ("m2m_add", "u"),
    7: ("m2m_add_reverse", "u"),
    8: ("m2m_remove", "u"),
    9: ("m2m_remove_reverse", "u"),
    10: ("m2m_clear", "u"),
    11: ("m2m_clear_reverse", "u"),
}
LOGIN_TYPES: dict[int, tuple[str, str]] = {
    0: ("auth.login", "success"),
    1: ("auth.logout", "success"),
    2: ("auth.login_failed", "failure"),
}
REDACTED = "[redacted]"
#: ``changes["<field>__str"]`` holds the string form of a foreign key's related objects
#: beside the pk in ``changes["<field>"]`` (Django field names cannot contain ``__``).
RELATED_SUFFIX = "__str"
DEFAULT_REDACT = frozenset({"password"})
_FIELD = re.compile(r"^[^$.\x00][^.\x00]{0,127}$")
_MAX_CHANGES = 256


def _finite_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def _loads(text: Any) -> Any:
    """Django's JSON, in which a FloatField's NaN/Infinity are written as such (not JSON,
    and refused by the schema): kept as their text ("NaN", "Infinity", "1e999")."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text, parse_constant=str, parse_float=_finite_or_text) if text else None
    except ValueError:
        return None


def _serialised_fields(object_json_repr: Any) -> dict[str, Any]:
    """The ``fields`` of Django's ``serializers.serialize("json", [obj])`` output."""
    data = _loads(object_json_repr)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        fields = data[0].get("fields")
        return dict(fields) if isinstance(fields, dict) else {}
    return {}


def _clean(value: Any, field: str, redact: Collection[str]) -> Any:
    return REDACTED if field in redact and value not in (None, "") else value


def crud_changes(
    verb: str, info: Mapping[str, Any], redact: Collection[str] = DEFAULT_REDACT
) -> dict[str, dict[str, Any]]:
    """Field diffs: updates from ``changed_fields``; a create's (delete's) fields as
    new (old) values, so an object's history can be rebuilt from its events."""
    changes: dict[str, dict[str, Any]] = {}
    if verb == "update":
        delta = _loads(info.get("changed_fields"))
        if isinstance(delta, dict):
            for field, pair in delta.items():
                if isinstance(pair, list | tuple) and len(pair) == 2:
                    old, new = pair
                    changes[field] = {
                        "old": _clean(old, field, redact),
                        "new": _clean(new, field, redact),
                    }
    elif verb in ("create", "delete"):
        for field, value in _serialised_fields(info.get("object_json_repr")).items():
            if value is None:
                continue  # nothing to say about an unset field
            value = _clean(value, field, redact)
            changes[field] = {"old": None, "new": value} if verb == "create" else {"old": value}
    valid = {k: v for k, v in changes.items() if _FIELD.match(k)}
    return dict(list(valid.items())[:_MAX_CHANGES])


def crud_event(
    info: Mapping[str, Any],
    *,
    tenant: str,
    model_label: str,
    actor: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    redact: Collection[str] = DEFAULT_REDACT,
    related: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``model_label`` is ``app_label.model`` (e.g. ``shop.invoice``). ``related`` maps a
    foreign-key field to the string form of its old/new related object
    (``{"customer": {"old": "Globex", "new": "Initech"}}``); it is added to ``changes``
    as ``customer__str`` beside the pks."""
    verb, crud = CRUD_VERBS.get(int(info.get("event_type", 0)), ("change", "u"))
    event: dict[str, Any] = {
        "tenant": tenant,
        "action": f"{model_label}.{verb}",
        "crud": crud,
        "targets": [
            {
                "type": model_label,
                "id": str(info.get("object_id")),
                "name": str(info.get("object_repr") or "")[:256],
            }
        ],
        "changes": with_related_names(crud_changes(verb, info, redact), related or {}),
        "metadata": {"source": "django-easy-audit", "event": verb},
    }
    if verb.startswith("m2m"):
        event["metadata"]["m2m"] = _loads(info.get("changed_fields"))
    return _finish(event, info, actor, context)


def with_related_names(
    changes: dict[str, dict[str, Any]], related: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Add ``<field>__str`` beside each foreign key in ``changes`` (same old/new keys)."""
    out = dict(changes)
    for field, names in related.items():
        change = changes.get(field)
        if change is None:
            continue
        entry = {k: (None if names.get(k) is None else str(names[k])[:256]) for k in change}
        if any(v is not None for v in entry.values()):
            out[f"{field}{RELATED_SUFFIX}"] = entry
    return dict(list(out.items())[:_MAX_CHANGES])


def login_event(
    info: Mapping[str, Any],
    *,
    tenant: str,
    context: Mapping[str, Any] | None = None,
    user_pk: Any = None,
) -> dict[str, Any]:
    """Actor and target: ``{id: pk, name: username}`` for every login record of a known
    user, failed ones included (easyaudit gives no pk for those: the backend looks the
    username up and passes ``user_pk``); an unknown username is the id itself, with
    ``metadata.unknown_user``."""
    action, outcome = LOGIN_TYPES.get(int(info.get("login_type", 0)), ("auth.login", "success"))
    username = str(info.get("username") or "") or None
    user_id = info.get("user_id")
    if user_id is None:
        user_id = user_pk
    ident = str(user_id) if user_id is not None else username
    event: dict[str, Any] = {
        "tenant": tenant,
        "action": action,
        "outcome": outcome,
        "metadata": {"source": "django-easy-audit"},
    }
    if user_id is None and username:
        event["metadata"]["unknown_user"] = True
    if ident:
        actor = {"id": ident, "type": "user", "name": username}
        event["actor"] = actor
        event["targets"] = [{"type": "user", "id": ident, "name": username}]
    ctx = {**(context or {}), "ip": info.get("remote_ip") or (context or {}).get("ip")}
    return _finish(event, info, None, ctx)


def request_event(
    info: Mapping[str, Any],
    *,
    tenant: str,
    actor: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    method = str(info.get("method") or "GET").upper()
    path = str(info.get("url") or "/")
    query = info.get("query_string")
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    event: dict[str, Any] = {
        "tenant": tenant,
        "action": f"http.{method.lower()}",
        "targets": [{"type": "http.path", "id": path[:256]}],
        "metadata": {"source": "django-easy-audit", "method": method, "path": path},
    }
    if query:
        event["metadata"]["query_string"] = str(query)
    ctx = {**(context or {}), "ip": info.get("remote_ip") or (context or {}).get("ip")}
    return _finish(event, info, actor, ctx)


def _finish(
    event: dict[str, Any],
    info: Mapping[str, Any],
    actor: Mapping[str, Any] | None,
    context: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if actor:
        event["actor"] = {k: v for k, v in actor.items() if v}
    ctx = {k: str(v) for k, v in (context or {}).items() if v}
    if ctx:
        event["context"] = ctx
    when = info.get("datetime")
    if when is not None and getattr(when, "tzinfo", None) is not None:
        event["occurred_at"] = when
    for target in event.get("targets", []):
        if not target.get("name"):
            target.pop("name", None)
    return event
