"""Issue 18's targets, each beside its reference: ``bench/run.py``'s step 4.

Runs the target scripts as subprocesses (each starts and stops its own servers) with
their own CLI flags, in a folder whose ``results`` is ``bench/results/targets/``, so a
``make bench`` run never overwrites the standalone runs' files in ``bench/results/``:

- ``bench_store_cpu.py``: store CPU per 1,000 events, indexes before issue 18 vs now;
- ``bench_processor_cpu.py``: processor CPU per 1,000 events (the store free);
- ``bench_floor.py``: the API's cached hit beside the minimal Quart floor (one run);
- ``bench_workers.py``: the same, per API process and with 2 workers (median of rounds);
- ``bench_wait.py``: ``POST ?wait=true`` beside the 202 path, 1 and 16 clients;
- ``bench_growth.py``: the uncached list beside the direct bounded query as the store grows.

:func:`rows` reads what they wrote; a missing or unreadable file gives "not run" rows.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "results" / "targets"

# script -> (full flags, quick flags)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "bench_store_cpu.py": (
        ["--events", "6000", "--rounds", "5"],
        ["--events", "2000", "--rounds", "2"],
    ),
    "bench_processor_cpu.py": (
        ["--events", "20000", "--rounds", "5"],
        ["--events", "5000", "--rounds", "2"],
    ),
    "bench_floor.py": (["--seconds", "10"], ["--seconds", "4", "--events", "1000"]),
    "bench_workers.py": (
        ["--seconds", "8", "--rounds", "5"],
        ["--seconds", "4", "--rounds", "2", "--events", "1000"],
    ),
    "bench_wait.py": (["--seconds", "10"], ["--seconds", "5"]),
    "bench_growth.py": (
        ["--sizes", "5000,20000,100000,1000000", "--rounds", "21", "--budget", "3600"],
        ["--sizes", "5000,20000", "--rounds", "5", "--budget", "150"],
    ),
}


def run_targets(
    out: Path = OUT,
    quick: bool = False,
    timeout: float = 5400.0,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Run every target script; returns {script: {"rc", "seconds", "flags"}}.

    Each script is reached through a symlink in a temporary folder whose ``results`` is
    ``out``: the scripts write ``Path(__file__).parent / "results"`` and import their
    helpers from the real ``bench/`` (Python resolves a script's symlink for sys.path).
    """
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="auditstream-targets-"))
    (folder / "results").symlink_to(out.resolve(), target_is_directory=True)
    ran: dict[str, Any] = {}
    for script, (full, short) in SCRIPTS.items():
        if script in skip:  # its files in ``out`` from an earlier run stay as they are
            print(f"4. {script}: skipped, {out} keeps its earlier results", flush=True)
            ran[script] = {"rc": None, "seconds": 0, "flags": ["(not run: earlier results)"]}
            continue
        (folder / script).symlink_to(BENCH / script)
        flags = short if quick else full
        if script == "bench_wait.py":
            flags = [*flags, "--out", os.path.relpath(out / "wait.json", BENCH.parent)]
        log = folder / f"{script.removesuffix('.py')}.log"
        print(f"4. {script} {' '.join(flags)} (log: {log}) …", flush=True)
        t = time.perf_counter()
        with log.open("w") as f:
            try:
                rc = subprocess.run(
                    [sys.executable, str(folder / script), *flags],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    cwd=BENCH.parent,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        ran[script] = {"rc": rc, "seconds": round(time.perf_counter() - t), "flags": flags}
        print(f"   rc {rc} in {ran[script]['seconds']} s", flush=True)
        if rc:
            print(*log.read_text().splitlines()[-15:], sep="\n", flush=True)
    return ran


def _json(out: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _growth(out: Path) -> list[dict[str, str]]:
    try:
        with (out / "growth.csv").open() as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


Row = dict[str, Any]


def _row(
    what: str,
    measured: float | None,
    reference: float | None,
    ratio: float | None,
    target: str,
    met: bool | None,
    unit: str = "",
) -> Row:
    return {
        "what": what,
        "measured": measured,
        "reference": reference,
        "ratio": ratio,
        "target": target,
        "met": met,
        "unit": unit,
    }


def _missing(what: str, target: str) -> Row:
    return _row(what, None, None, None, target, None)


def rows(out: Path = OUT, ingestion: dict[str, Any] | None = None) -> list[Row]:
    """One row per target: measured, reference, ratio, target, met (None: not run)."""
    result: list[Row] = []

    growth = _growth(out)
    if not growth:
        result.append(_missing("uncached list vs direct bounded query", "≤ 2x"))
    for r in growth:
        for key, label in (("list", "uncached list"), ("actor", "uncached list, actor filter")):
            ratio = float(r[f"{key}_vs_reference"])
            result.append(
                _row(
                    f"{label}, {int(r['stored_events']):,} events, p50 vs direct query",
                    float(r[f"{key}_ms"]),
                    float(r["reference_ms"]),
                    ratio,
                    "≤ 2x",
                    ratio <= 2.0,
                    "ms",
                )
            )
    if len(growth) > 1:
        first, last = float(growth[0]["list_ms"]), float(growth[-1]["list_ms"])
        result.append(
            _row(
                f"uncached list flat: {int(growth[-1]['stored_events']):,} vs "
                f"{int(growth[0]['stored_events']):,} events",
                last,
                first,
                last / first,
                "flat (≤ 2x)",
                last / first <= 2.0,
                "ms",
            )
        )

    wait = _json(out, "wait.json")
    for clients in (1, 16):
        n = f"{clients} client(s)"
        what = f"?wait=true vs 202, {n}"
        got = {r["path"]: r for r in (wait or {}).get("rows", []) if r.get("clients") == clients}
        if "wait=true" not in got or "202" not in got:
            result.append(_missing(f"{what}, events/s", "≥ 0.8x"))
            result.append(_missing(f"?wait=true p50 vs batch interval + 100 ms, {n}", "≤ 1x"))
            continue
        w, p = got["wait=true"], got["202"]
        speed = w["events_per_s"] / p["events_per_s"] if p["events_per_s"] else None
        result.append(
            _row(
                f"{what}, events/s",
                w["events_per_s"],
                p["events_per_s"],
                speed,
                "≥ 0.8x",
                speed is not None and speed >= 0.8,
                "events/s",
            )
        )
        bound = float((wait or {}).get("batch_max_ms", 0)) + 100.0
        result.append(
            _row(
                f"?wait=true p50 vs batch interval + 100 ms, {n}",
                w["p50_ms"],
                bound,
                w["p50_ms"] / bound,
                "≤ 1x",
                w["p50_ms"] <= bound,
                "ms",
            )
        )

    floor = _json(out, "floor.json")
    if floor and "floor" in floor:
        api = {r["scenario"]: r for r in floor.get("api", {}).get("results", [])}
        hit, ref = api.get("cached list"), floor["floor"]
        if hit:
            ratio = ref["server_cpu_ms_per_request"] / hit["server_cpu_ms_per_request"]
            result.append(
                _row(
                    "cached hit CPU/request vs floor, 1 process (bench_floor, 1 run)",
                    hit["server_cpu_ms_per_request"],
                    ref["server_cpu_ms_per_request"],
                    ratio,
                    "floor/api ≥ 0.9x",
                    ratio >= 0.9,
                    "ms",
                )
            )
            ratio = hit["rps"] / ref["rps"]
            result.append(
                _row(
                    "cached hit req/s vs floor, 1 process (bench_floor, 1 run)",
                    hit["rps"],
                    ref["rps"],
                    ratio,
                    "≥ 0.9x",
                    ratio >= 0.9,
                    "req/s",
                )
            )
    else:
        result.append(_missing("cached hit vs floor (bench_floor)", "≥ 0.9x"))

    workers = _json(out, "workers.json")
    med = (workers or {}).get("medians", {})
    floor_row = med.get("floor (Quart + one GET)")
    one, two = med.get("api cached hit, 1 worker(s)"), med.get("api cached hit, 2 worker(s)")
    if workers and floor_row and one and two:
        fcpu = floor_row["server_cpu_ms_per_request"]
        for label, row, factor, goal in (("1 process", one, 1, 0.9), ("2 workers", two, 2, 1.6)):
            ratio = factor * fcpu / row["server_cpu_ms_per_request"]
            result.append(
                _row(
                    f"cached hit CPU/request vs floor, {label} (capacity, bench_workers)",
                    row["server_cpu_ms_per_request"],
                    fcpu,
                    ratio,
                    f"{factor} x floor/api ≥ {goal}x" if factor > 1 else f"floor/api ≥ {goal}x",
                    ratio >= goal,
                    "ms",
                )
            )
            ratio = row["rps"] / floor_row["rps"]
            result.append(
                _row(
                    f"cached hit req/s vs floor, {label} (bench_workers)",
                    row["rps"],
                    floor_row["rps"],
                    ratio,
                    f"≥ {goal}x",
                    ratio >= goal,
                    "req/s",
                )
            )
    else:
        result.append(
            _missing(
                "cached hit vs floor, 1 process / 2 workers (bench_workers)", "≥ 0.9x / ≥ 1.6x"
            )
        )

    proc = _json(out, "processor_cpu.json")
    if proc and "total_ms_per_1000" in proc:
        total, goal = proc["total_ms_per_1000"], proc.get("target_ms_per_1000", 100.0)
        result.append(
            _row(
                "processor CPU per 1,000 events (store free)",
                total,
                goal,
                total / goal,
                "≤ 1x (≤ 100 ms)",
                total <= goal,
                "ms",
            )
        )
    else:
        result.append(_missing("processor CPU per 1,000 events", "≤ 100 ms"))

    store = _json(out, "store_cpu.json")
    sets = (store or {}).get("sets", {})
    if "after" in sets and "before" in sets:
        after, before = (
            sets["after"]["store_cpu_ms_per_1000"],
            sets["before"]["store_cpu_ms_per_1000"],
        )
        result.append(
            _row(
                f"store CPU per 1,000 events, {sets['after']['indexes']} indexes vs "
                f"{sets['before']['indexes']} before",
                after,
                before,
                after / before,
                "≤ 0.5x (halved)",
                after / before <= 0.5,
                "ms",
            )
        )
    else:
        result.append(_missing("store CPU per 1,000 events vs before", "≤ 0.5x"))

    if ingestion and ingestion.get("pipeline"):
        ceiling = ingestion["ceiling_events_per_s"]
        for workers_count, r in ingestion["pipeline"].items():
            ratio = r["events_per_s"] / ceiling
            result.append(
                _row(
                    f"ingestion, {workers_count} worker(s), vs store ceiling (step 1)",
                    r["events_per_s"],
                    ceiling,
                    ratio,
                    "≥ 0.9x",
                    ratio >= 0.9,
                    "events/s",
                )
            )
    return result


def _num(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(table: list[Row], ran: dict[str, Any] | None = None, note: str = "") -> list[str]:
    """The "Issue 18 targets" section of results.md."""
    lines = [
        "## Issue 18 targets",
        "",
        "Measured in the same `bench/run.py` run, each beside its reference (raw files: "
        "`bench/results/targets/`; plot: `targets.png`; shared machine: read the ratios).",
        *([note] if note else []),
        "",
        "| target | measured | reference | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in table:
        unit = f" {r['unit']}" if r["unit"] and r["measured"] is not None else ""
        met = "not run" if r["met"] is None else ("met" if r["met"] else "not met")
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['what']} | {_num(r['measured'])}{unit} | {_num(r['reference'])}{unit} | "
            f"{ratio} | {r['target']} | {met} |"
        )
    if ran:
        lines += ["", "Scripts run (flags, exit code, seconds):", ""]
        lines += [
            f"- `{name} {' '.join(v['flags'])}`: rc {v['rc']}, {v['seconds']} s"
            for name, v in ran.items()
        ]
    lines.append("")
    return lines


def plot(table: list[Row], path: Path) -> None:
    """Bar per measured target: ratio, with the met/not-met colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in table if r["ratio"] is not None]
    if not done:
        return
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(done) + 1.5))
    ax.barh(
        [r["what"] for r in done],
        [r["ratio"] for r in done],
        color=["#2a7" if r["met"] else "#c33" for r in done],
    )
    for i, r in enumerate(done):
        ax.text(r["ratio"], i, f" {r['ratio']:.2f}x ({r['target']})", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("ratio to the reference (green: target met)")
    ax.set_title("Issue 18 targets")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
