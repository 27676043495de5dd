"""The Django integration under a name that cannot clash with an application's modules.

``INSTALLED_APPS += ["easyaudit", "auditstream.django"]`` registers the system checks
(``manage.py check`` reports missing or wrong settings as ``auditstream.E00x``) and
starts the audit producer when Django is ready, so events spooled earlier drain
without waiting for a new record.
``DJANGO_EASY_AUDIT_LOGGING_BACKEND = "auditstream.django.AuditstreamBackend"``.

The backend's code lives in :mod:`producers.django_backend` (the old path keeps
working). Beside it: :mod:`auditstream.django.admin` (``AuditHistoryMixin``: the
object's audit history inside the Django admin, read from the query API) and
:mod:`auditstream.django.middleware` (``AuditMiddleware``: one event per request,
WSGI or ASGI). Install with ``pip install "auditstream[django]"``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AuditstreamBackend", "check_settings", "close_producer", "get_producer"]


def __getattr__(name: str) -> Any:
    # Lazy: INSTALLED_APPS imports this package before Django's apps are ready, and the
    # backend imports django.contrib models.
    if name in __all__:
        from producers import django_backend

        return getattr(django_backend, name)
    raise AttributeError(name)
