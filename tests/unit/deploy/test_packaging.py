"""Packaging that fits its users (issue 15 item 5).

Base dependencies are what the SDK (``producers``) and the core (``audit_events``)
need; each role adds its extra: ``processor``, ``api``, ``embedded`` (both
services + the development servers, ``make run``), ``dev``. The real proof is a
fresh virtualenv with ``pip install .`` (done by hand; ``deploy/check-locks.sh``
does it per role); these tests keep it true without a network: the SDK and the
core import with the services' libraries blocked, and every import of a service
is covered by base + its role's extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]
SERVICE_ONLY = ("faust", "mode", "quart", "quart_schema", "hypercorn", "argon2", "pymongo", "bson")
SERVICE_ONLY += ("redis", "prometheus_client", "jwt", "httpx", "swagger_ui", "werkzeug")


def _project() -> dict[str, Any]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = data["project"]
    assert isinstance(project, dict)
    return project


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found, requirement
    return found.group(0).lower().replace("_", "-")


def _names(requirements: list[str]) -> set[str]:
    return {_name(r) for r in requirements}


def _extra(extra: str) -> set[str]:
    """Distribution names an extra brings (self-references ``auditstream[a,b]`` expanded)."""
    extras = _project()["optional-dependencies"]
    out: set[str] = set()
    for req in extras[extra]:
        if _name(req) == "auditstream":
            inner = re.search(r"\[([^\]]+)\]", req)
            assert inner, req
            for name in inner.group(1).split(","):
                out |= _extra(name.strip())
        else:
            out.add(_name(req))
    return out


def test_base_dependencies_are_the_sdk_and_the_core_only() -> None:
    base = _names(_project()["dependencies"])
    assert base == {"pydantic", "pydantic-settings", "orjson", "aiokafka", "cryptography", "click"}
    heavy = {"faust-streaming", "quart", "hypercorn", "argon2-cffi", "pymongo", "redis"}
    assert not heavy & base


def test_the_role_extras_exist_and_embedded_pulls_both_services() -> None:
    extras = _project()["optional-dependencies"]
    assert {"processor", "api", "embedded", "dev", "django", "bench"} <= set(extras)
    assert "faust-streaming" in _extra("processor")
    assert {"quart", "hypercorn", "argon2-cffi"} <= _extra("api")
    assert "faust-streaming" not in _extra("api")
    assert "quart" not in _extra("processor")
    # `make run` installs .[embedded]: it must bring everything `auditstream up` starts.
    assert _extra("processor") | _extra("api") <= _extra("embedded")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "install --quiet -e '.[embedded]'" in makefile
    assert "'.[embedded,dev]'" in makefile


def test_the_sdk_and_the_core_import_without_the_services_libraries() -> None:
    """Run in a child with every service-only library made unimportable."""
    script = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {SERVICE_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, Block())
import audit_events, producers
names = ["audit_events", "producers", "auditstream.cli"]
for pkg in (audit_events, producers):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not info.name.startswith("producers.django"):  # the django extra
            names.append(info.name)
for name in names:
    importlib.import_module(name)
from producers import AuditProducer, SyncAuditProducer, build_event
from audit_events.settings import AuditSettings
AuditSettings(_env_file=None)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
assert not loaded, loaded
print(len(names), "modules")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[0]) >= 10


def _imports(tree: ast.AST, lazy: bool) -> list[ast.AST]:
    """Import statements; with ``lazy=False`` not those in functions or for typing only."""
    if lazy:
        return list(ast.walk(tree))
    out: list[ast.AST] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # typing only
        out += [node, *_imports(node, lazy=False)]
    return out


def _third_party_imports(folder: str, lazy: bool = True) -> set[str]:
    """Top-level modules the .py files under ``folder`` import (``lazy``: in functions too)."""
    first_party = {"audit_events", "producers", "stream_processor", "query_api", "auditstream"}
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), lazy):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in first_party}


@pytest.mark.parametrize(
    ("folder", "extra"),
    [("audit_events", None), ("stream_processor", "processor"), ("query_api", "api")],
)
def test_each_role_installs_what_its_code_imports(folder: str, extra: str | None) -> None:
    """The Dockerfile installs base + the role's extra only: that must cover the code.

    The core's imports inside functions (pymongo for the store adapter, faust for
    the processor's client options) run only in the services that have them."""
    installed = _names(_project()["dependencies"]) | (_extra(extra) if extra else set())
    # Libraries installed as dependencies of a listed one (quart brings werkzeug,
    # faust-streaming brings mode, pydantic its core) count as covered through it.
    covered_by = {"werkzeug": "quart", "mode": "faust-streaming", "pydantic_core": "pydantic"}
    dists = importlib.metadata.packages_distributions()
    for module in sorted(_third_party_imports(folder, lazy=extra is not None)):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        names |= {covered_by[module]} if module in covered_by else set()
        assert names & installed, f"{folder} imports {module} ({names}): not in base + {extra}"


def test_a_command_without_its_extra_says_which_to_install() -> None:
    """``auditstream api`` on the base install: one line naming the extra, exit 2."""
    script = f"""
import importlib.abc, sys
BLOCKED = {SERVICE_ONLY!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None
sys.meta_path.insert(0, Block())
sys.argv = ["auditstream", *sys.argv[1:]]
from auditstream.cli import main
main()
"""
    for command, extra in (("api", "api"), ("processor", "processor")):
        out = subprocess.run(
            [sys.executable, "-c", script, command],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        (line,) = out.stderr.strip().splitlines()
        assert f"pip install 'auditstream[{extra}]'" in line, line


@pytest.mark.slow
def test_a_fresh_venv_with_the_base_install_runs_the_sdk(tmp_path: Path) -> None:
    """``pip install .`` in a new virtualenv (about a minute: it downloads the base
    dependencies): ``producers`` and ``audit_events`` import and build an event,
    and none of the services' libraries is installed."""
    import shutil
    import venv

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("audit_events", "producers", "stream_processor", "query_api", "auditstream"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(src)], check=True, timeout=600)
    check = """
import importlib.util
import audit_events.chain, audit_events.settings, producers
from producers import build_event
event = build_event(tenant="acme", action="invoice.update", actor={"id": "alice"})
assert event.tenant == "acme"
libs = ("faust", "quart", "hypercorn", "argon2", "pymongo", "redis", "prometheus_client")
present = [m for m in libs if importlib.util.find_spec(m)]
assert not present, present
print("ok")
"""
    out = subprocess.run(
        [python, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.stdout.strip() == "ok", out.stderr[-3000:]
