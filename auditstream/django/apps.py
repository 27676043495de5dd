"""``auditstream.django``'s app config: system checks and an early producer start."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]


class AuditstreamConfig(AppConfig):  # type: ignore[misc]
    name = "auditstream.django"
    label = "auditstream"
    verbose_name = "auditstream"

    def ready(self) -> None:
        from django.core import checks  # type: ignore[import-untyped]

        from auditstream.django.admin import check_api
        from producers import django_backend  # registers the checks

        checks.register(check_api, "auditstream")
        django_backend.start_in_background()
