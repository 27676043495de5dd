"""WSGI entry point for gunicorn: ``tests.integration.django_project.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.integration.django_project.settings")
application = get_wsgi_application()
