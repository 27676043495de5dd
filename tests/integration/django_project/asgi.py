"""ASGI entry point (hypercorn, uvicorn): ``tests.integration.django_project.asgi:application``."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.django_project.settings")
application = get_asgi_application()
