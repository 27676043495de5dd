"""History inside the Django admin, read from the auditstream query API.

::

    from django.contrib import admin
    from auditstream.django.admin import AuditHistoryMixin

    @admin.register(Invoice)
    class InvoiceAdmin(AuditHistoryMixin, admin.ModelAdmin):
        pass

The admin's "History" button of every change page then shows the object's
auditstream timeline (newest first, each event's field diffs, actor and outcome,
older pages by the API's cursor), its state ``as_of`` any time (and "state after"
each event), and links to the web viewer (``/ui``) for the rest. It needs
``"auditstream.django"`` in ``INSTALLED_APPS`` (for the template) and
``settings.AUDITSTREAM["API"]`` (see :mod:`auditstream.django.query`).

The object is the target the backend records: type ``<app_label>.<model_name>``,
id ``str(pk)``; a deleted object's history stays readable at its old URL. Anyone
with the view or change permission of the model may see it. When the API cannot
answer, the page says why (and logs it); it never fails with a server error.
Overriding the admin's ``history_view`` replaces its own ``LogEntry`` list, as
django-simple-history does.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.contrib.admin.utils import unquote  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]
from django.core.exceptions import PermissionDenied  # type: ignore[import-untyped]
from django.http import HttpRequest, HttpResponse  # type: ignore[import-untyped]
from django.template.response import TemplateResponse  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from auditstream.django import query
from auditstream.django.query import APIConfig, QueryAPIError

log = logging.getLogger("auditstream.django")

RELATED_SUFFIX = "__str"  # producers.django_mapping.RELATED_SUFFIX


def _options() -> dict[str, Any]:
    raw = getattr(django_settings, "AUDITSTREAM", {}) or {}
    return dict(raw) if isinstance(raw, dict) else {}


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def change_rows(changes: Any) -> list[dict[str, Any]]:
    """An event's ``changes`` as rows ``{field, old, new, has_old, has_new}``; a foreign
    key shows the related object's string form beside the pk (``Globex (#3)``)."""
    if not isinstance(changes, dict):
        return []
    rows = []
    for field, change in sorted(changes.items()):
        if field.endswith(RELATED_SUFFIX) or not isinstance(change, dict):
            continue
        names = changes.get(field + RELATED_SUFFIX)
        names = names if isinstance(names, dict) else {}
        row: dict[str, Any] = {"field": field}
        for side in ("old", "new"):
            row[f"has_{side}"] = side in change
            shown = _show(change.get(side))
            if names.get(side) is not None:
                shown = f"{names[side]} (#{shown})"
            row[side] = shown
        rows.append(row)
    return rows


def parse_as_of(value: str) -> str:
    """An RFC 3339 time, or a ``datetime-local`` value read in Django's current time
    zone, as RFC 3339 UTC; ValueError when it is neither."""
    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_api(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``auditstream.E007``: ``AUDITSTREAM["API"]`` is set but incomplete (the History
    view would only show the error)."""
    options = _options()
    if "API" not in options:
        return []
    try:
        APIConfig.from_options(options)
    except QueryAPIError as exc:
        return [checks.Error(str(exc), id="auditstream.E007")]
    return []


class AuditHistoryMixin:
    """A ModelAdmin mixin: the "History" view shows the object's auditstream timeline."""

    auditstream_history_template = "auditstream/history.html"
    #: Events per page (the API allows 1..1000).
    auditstream_history_limit = 50

    # Attributes of the ModelAdmin this is mixed into.
    model: Any
    admin_site: Any

    def auditstream_target(self, object_id: str) -> tuple[str, str]:
        """The (type, id) the backend records for the object: ``app_label.model_name``, pk."""
        meta = self.model._meta
        return f"{meta.app_label}.{meta.model_name}", str(object_id)

    def auditstream_tenant(self, request: HttpRequest, target: tuple[str, str]) -> str | None:
        """``AUDITSTREAM["TENANT"]``, else ``TENANT_RESOLVER("history", {"type", "id"},
        request)``."""
        options = _options()
        resolver = options.get("TENANT_RESOLVER")
        if resolver:
            fn = import_string(resolver) if isinstance(resolver, str) else resolver
            tenant = fn("history", {"type": target[0], "id": target[1]}, request)
            return None if tenant is None else str(tenant)
        tenant = options.get("TENANT")
        return str(tenant) if tenant else None

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        model_admin: Any = self
        if not model_admin.has_view_or_change_permission(request):
            raise PermissionDenied
        object_id = unquote(object_id)
        obj = None
        try:
            obj = model_admin.get_object(request, object_id)
        except Exception:  # a malformed pk: the history of that id is simply empty
            log.debug("auditstream: no object %r", object_id, exc_info=True)
        if obj is not None and not model_admin.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        target = self.auditstream_target(str(obj.pk) if obj is not None else object_id)
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": f"Audit history: {obj if obj is not None else object_id}",
            "subtitle": None,
            "object": obj,
            "object_id": object_id,
            "opts": self.model._meta,
            "module_name": str(self.model._meta.verbose_name_plural).capitalize(),
            "target_type": target[0],
            "target_id": target[1],
            "events": [],
            "state": None,
            "as_of": request.GET.get("as_of", ""),
            "error": None,
            "next_cursor": None,
            "viewer_url": None,
            **(extra_context or {}),
        }
        try:
            self._fill(request, target, context)
        except QueryAPIError as exc:
            log.warning("auditstream: history of %s %s: %s", target[0], target[1], exc)
            context["error"] = str(exc)
        except Exception as exc:  # never a server error for the admin page
            log.exception("auditstream: history of %s %s", target[0], target[1])
            context["error"] = f"the history could not be read: {exc!r}"
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.auditstream_history_template, context)

    def _fill(self, request: HttpRequest, target: tuple[str, str], context: dict[str, Any]) -> None:
        config = APIConfig.from_options(_options())
        context["viewer_url"] = query.viewer_history(config, *target)
        tenant = self.auditstream_tenant(request, target)
        if not tenant:
            raise QueryAPIError('no tenant: settings.AUDITSTREAM needs "TENANT" or a resolver.')
        as_of = request.GET.get("as_of", "").strip()
        if as_of:
            try:
                as_of = parse_as_of(as_of)
            except ValueError:
                raise QueryAPIError(f"as of: {as_of!r} is not a date and time") from None
            state = query.state_as_of(config, tenant, *target, as_of)
            fields = state.get("fields")
            fields = fields if isinstance(fields, dict) else {}
            context["state"] = {
                "as_of": _when(state.get("as_of")),
                "deleted": bool(state.get("deleted")),
                "events_applied": state.get("events_applied", 0),
                "rows": [
                    {
                        "field": name,
                        "value": _show(info.get("value")),
                        "inferred": bool(info.get("inferred")),
                        "event_url": query.viewer_event(config, tenant, str(info.get("event_id"))),
                        "when": _when(info.get("occurred_at")),
                    }
                    for name, info in sorted(fields.items())
                    if isinstance(info, dict) and not name.endswith(RELATED_SUFFIX)
                ],
            }
        page = query.history(
            config,
            tenant,
            *target,
            limit=self.auditstream_history_limit,
            cursor=request.GET.get("cursor") or None,
        )
        events = []
        for event in page.get("data") or []:
            actor = event.get("actor") or {}
            events.append(
                {
                    "id": event.get("id"),
                    "when": _when(event.get("occurred_at")),
                    "occurred_at": event.get("occurred_at"),
                    "action": event.get("action"),
                    "actor": actor.get("name") or actor.get("id") or "—",
                    "outcome": event.get("outcome", "success"),
                    "ip": (event.get("context") or {}).get("ip"),
                    "changes": change_rows(event.get("changes")),
                    "url": query.viewer_event(config, tenant, str(event.get("id"))),
                }
            )
        context["events"] = events
        context["next_cursor"] = page.get("next_cursor")
