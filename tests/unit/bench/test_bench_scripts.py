"""The bench scripts that ``make bench`` / ``make bench-quick`` run, on tiny inputs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
pytestmark = pytest.mark.unit


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_processor_cpu_round_runs_on_its_free_store() -> None:
    # The chain writer looks up a purge marker in the events collection's database.
    cpu = load("bench_processor_cpu")
    decoding, writing = await cpu.one_round(cpu.records(40))
    assert decoding >= 0 and writing >= 0


def test_targets_table_says_not_run_when_a_script_wrote_nothing(tmp_path: Path) -> None:
    targets = load("targets")
    (tmp_path / "processor_cpu.json").write_text(
        json.dumps({"total_ms_per_1000": 63.0, "target_ms_per_1000": 100.0})
    )
    (tmp_path / "store_cpu.json").write_text("{not json")
    rows = {r["what"]: r for r in targets.rows(out=tmp_path)}
    processor = rows["processor CPU per 1,000 events (store free)"]
    assert (processor["ratio"], processor["met"]) == (0.63, True)
    assert rows["store CPU per 1,000 events vs before"]["met"] is None
    text = "\n".join(targets.markdown(list(rows.values())))
    assert "| not run |" in text and "| met |" in text


def test_skipped_target_scripts_keep_their_earlier_files(tmp_path: Path) -> None:
    targets = load("targets")
    (tmp_path / "growth.csv").write_text("kept")
    ran = targets.run_targets(out=tmp_path, quick=True, skip=frozenset(targets.SCRIPTS))
    assert {v["rc"] for v in ran.values()} == {None} and set(ran) == set(targets.SCRIPTS)
    assert (tmp_path / "growth.csv").read_text() == "kept"
    assert "(not run: earlier results)" in "\n".join(targets.markdown([], ran))
