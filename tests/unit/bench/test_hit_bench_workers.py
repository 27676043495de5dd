"""bench_workers --before measures the other tree's API, not this one's (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from audit_events.settings import AuditSettings
from tests.unit.bench.test_bench_scripts import load

pytestmark = pytest.mark.unit


def test_the_other_trees_api_imports_that_trees_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = load("bench_workers")
    seen: list[dict[str, str]] = []

    def spawn(env: dict[str, str], log: Path, *args: str) -> Any:
        seen.append(env)
        return None

    monkeypatch.setattr(workers, "spawn", spawn)
    settings = AuditSettings(jwt_secret=SecretStr("s" * 32), mongo_db="unit")
    workers.start_api(settings, tmp_path, 1, str(tmp_path / "before"))
    workers.start_api(settings, tmp_path, 1)
    # python -m puts the working directory (this tree) first unless told not to:
    # a module of the same name in both, run the way the API is run.
    here, there = tmp_path / "here", tmp_path / "before"
    for tree in (here, there):
        tree.mkdir()
        (tree / "probe.py").write_text(f"print({tree.name!r})")
    ran = subprocess.run(
        [sys.executable, "-m", "probe"],
        cwd=here,
        env={**os.environ, **{k: v for k, v in seen[0].items() if k.startswith("PYTHON")}},
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.strip() == "before"
    assert "PYTHONSAFEPATH" not in seen[1]  # this tree's API: as before


async def test_a_run_disturbed_by_other_processes_is_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bench_workers keeps the least disturbed of at most 1 + --retries attempts,
    and stops at the first one during which others took at most --quiet cores."""
    import argparse

    workers = load("bench_workers")
    elsewhere = iter([0.9, 0.5, 0.1, 0.0])
    attempts: list[float] = []

    async def once(*args: Any) -> dict[str, Any]:
        attempts.append(next(elsewhere))
        return {"run": "x", "cores": {"elsewhere": attempts[-1]}}

    monkeypatch.setattr(workers, "measure_once", once)
    args = argparse.Namespace(retries=2, quiet=0.2)
    row = await workers.measure("x", 1, 1, "/", {}, args, {})
    assert attempts == [0.9, 0.5, 0.1] and row["attempt"] == 2
    attempts.clear()
    elsewhere = iter([0.9, 0.5, 0.7])
    row = await workers.measure("x", 1, 1, "/", {}, args, {})
    assert attempts == [0.9, 0.5, 0.7] and row["cores"]["elsewhere"] == 0.5  # the least
