"""A small Django project whose django-easy-audit records go to auditstream.

Kafka settings come from the ``AUDITSTREAM_*`` environment the test sets; the
database from ``SHOP_DB``, the spool directory from ``SHOP_SPOOL_DIR`` (unset: the
default location), producer options from ``SHOP_AUDIT_OPTIONS`` (JSON), the query API
of the admin's History view from ``SHOP_AUDIT_API`` (JSON: ``AUDITSTREAM["API"]``);
``SHOP_AUDIT_MIDDLEWARE=1`` adds auditstream's request middleware.
"""

from __future__ import annotations

import json
import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "tests.integration.django_project.shop.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.messages",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "easyaudit",
    "auditstream.django",
    "tests.integration.django_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "easyaudit.middleware.easyaudit.EasyAuditMiddleware",
]
if os.environ.get("SHOP_AUDIT_MIDDLEWARE"):
    MIDDLEWARE.append("auditstream.django.middleware.AuditMiddleware")
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", "shop.sqlite3"),
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, test only

DJANGO_EASY_AUDIT_LOGGING_BACKEND = os.environ.get(
    "SHOP_AUDIT_BACKEND", "auditstream.django.AuditstreamBackend"
)
AUDITSTREAM: dict[str, object] = {"TENANT": "shop", "SERVICE": "django-shop"}
if os.environ.get("SHOP_NO_TENANT"):
    del AUDITSTREAM["TENANT"]
if os.environ.get("SHOP_SPOOL_DIR"):
    AUDITSTREAM["SPOOL_DIR"] = os.environ["SHOP_SPOOL_DIR"]
if os.environ.get("SHOP_AUDIT_OPTIONS"):
    AUDITSTREAM["OPTIONS"] = json.loads(os.environ["SHOP_AUDIT_OPTIONS"])
if os.environ.get("SHOP_AUDIT_API"):
    AUDITSTREAM["API"] = json.loads(os.environ["SHOP_AUDIT_API"])
