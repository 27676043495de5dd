"""The Django integration installs with ``auditstream[django]`` and imports under its
namespaced name (issue 19 item 5), without the services' libraries."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
# The services' libraries (as in test_packaging.py): a Django app must not need them.
SERVICE_ONLY = ("faust", "mode", "quart", "quart_schema", "hypercorn", "argon2", "pymongo", "bson")
SERVICE_ONLY += ("redis", "prometheus_client", "jwt", "httpx", "swagger_ui", "werkzeug")


def _project() -> dict[str, Any]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert isinstance(project, dict)
    return project


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0].lower() for r in requirements}


def _imports(paths: list[Path]) -> set[str]:
    """Top-level modules the files import (anywhere in them), stdlib and ours left out."""
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    ours = {"audit_events", "producers", "auditstream"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in ours}


def test_the_django_extra_covers_what_the_integration_imports() -> None:
    installed = _names(_project()["dependencies"])
    installed |= _names(_project()["optional-dependencies"]["django"])
    # easyaudit is django-easy-audit's module (imported lazily); asgiref comes with Django.
    dist_of = {"django": "django", "easyaudit": "django-easy-audit", "asgiref": "django"}
    paths = [*(ROOT / "auditstream/django").glob("*.py"), *(ROOT / "producers").glob("django*.py")]
    imported = _imports(paths)
    assert imported == {"django", "asgiref", "easyaudit"}, imported
    assert {dist_of[m] for m in imported} <= installed
    assert "celery" not in installed  # the Celery example is an example, not a dependency


def test_the_history_template_is_package_data() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = data["tool"]["setuptools"]["package-data"]["auditstream"]
    assert "django/templates/**/*" in patterns
    assert (ROOT / "auditstream/django/templates/auditstream/history.html").is_file()


def test_a_django_project_imports_the_integration_without_the_services() -> None:
    """A project with ``auditstream.django`` installed: setup, the checks, the backend
    under both names, the admin mixin and the middleware; no service library loaded."""
    script = f"""
import importlib.abc, sys
BLOCKED = {(*SERVICE_ONLY, "celery")!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, Block())
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "django.contrib.sessions", "easyaudit",
                    "auditstream.django"],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
    AUDITSTREAM={{"TENANT": "acme", "API": {{"URL": "http://audit:8080"}}}},
)
import django
django.setup()
from django.core import checks
import auditstream.django as integration
from auditstream.django.admin import AuditHistoryMixin
from auditstream.django.middleware import AuditMiddleware
from producers.django_backend import AuditstreamBackend
assert integration.AuditstreamBackend is AuditstreamBackend
ids = sorted(m.id for m in checks.run_checks() if m.id.startswith("auditstream"))
assert ids == ["auditstream.E001", "auditstream.E007"], ids
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
integration.close_producer(5)
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "XDG_STATE_HOME": "/tmp/h6-state"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
