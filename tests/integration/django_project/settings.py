"""A small Django project whose django-easy-audit records go to auditstream.

Kafka settings come from the ``AUDITSTREAM_*`` environment the test sets; the
database and spool paths from ``SHOP_DB`` and ``SHOP_SPOOL``.
"""

from __future__ import annotations

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "tests.integration.django_project.shop.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "easyaudit",
    "tests.integration.django_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "easyaudit.middleware.easyaudit.EasyAuditMiddleware",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", "shop.sqlite3"),
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, test only

DJANGO_EASY_AUDIT_LOGGING_BACKEND = "producers.django_backend.AuditstreamBackend"
AUDITSTREAM = {
    "TENANT": "shop",
    "SERVICE": "django-shop",
    "SPOOL_PATH": os.environ.get("SHOP_SPOOL", "audit-spool.db"),
}
