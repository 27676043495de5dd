"""The bench's reports: ``bench/results/results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import targets

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1),
        "servers": "Tansu (Kafka), SecantusDB (MongoDB), redis-server — all on this machine",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_reports(results: dict[str, Any]) -> None:
    """results.json, results.md (the sections present in ``results``) and the plots."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# auditstream benchmark", "", f"Machine: {results.get('machine')}", ""]
    if "ingestion" in results:
        lines += ingestion_lines(results)
    if "reads" in results:
        lines += reads_lines(results)
    table = targets.rows(ingestion=results.get("ingestion"))
    lines += targets.markdown(table, results.get("targets"), results.get("targets_note", ""))
    (RESULTS / "results.md").write_text("\n".join(lines) + "\n")
    targets.plot(table, RESULTS / "targets.png")
    if "ingestion" in results and "reads" in results and "end_to_end" in results:
        plot(results)


def ingestion_lines(results: dict[str, Any]) -> list[str]:
    ing = results["ingestion"]
    lines = [
        "## Ingestion",
        "",
        "| path | events/s | vs ceiling |",
        "|---|---:|---:|",
        f"| store ceiling (insert_many x1000) | {ing['ceiling_events_per_s']:.0f} | 1.00 |",
        f"| per-event insert_one (seeds) | {ing['per_event_insert_events_per_s']:.0f} | "
        f"{ing['per_event_insert_events_per_s'] / ing['ceiling_events_per_s']:.2f} |",
    ]
    for workers, row in ing["pipeline"].items():
        lines.append(
            f"| auditstream, {workers} worker(s) | {row['events_per_s']:.0f} | "
            f"{row['events_per_s'] / ing['ceiling_events_per_s']:.2f} |"
        )
    lines += [
        "",
        f"Pipeline vs per-event approach: x{ing['ratio_to_per_event']:.1f}.",
        "",
    ]
    if "end_to_end" not in results:
        return lines
    lines += [
        "End-to-end (produce → visible via GET /v1/events/{id}), steady rate:",
        "",
        "| events/s offered | samples | not visible in 30 s | p50 ms | p99 ms | max ms "
        "| mean batch | mean write ms | mean Kafka → stored ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {e['rate']} | {e['samples']} | {e.get('not_visible_within_30s', 0)} | "
        f"{e['p50_ms']:.0f} | {e['p99_ms']:.0f} | {e['max_ms']:.0f} | "
        f"{e.get('mean_batch_events', float('nan')):.0f} | "
        f"{e.get('mean_write_ms', float('nan')):.0f} | "
        f"{e.get('mean_store_delay_ms', float('nan')):.0f} |"
        for e in results["end_to_end"]
    ]
    lines.append("")
    return lines


def reads_lines(results: dict[str, Any]) -> list[str]:
    lines = ["## Reads", ""]
    for level in results["reads"]:
        lines += [
            f"Store size {level['store_size']} (insert_many while growing to it: "
            f"{level['insert_events_per_s']:.0f} events/s):",
            "",
            "| scenario | clients | req/s | p50 ms | p99 ms | cache hit | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['scenario']} | {r['concurrency']} | {r['req_per_s']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['hit_ratio']:.2f} | {r['errors']} |"
            for r in level["reads"]
        ]
        lines.append("")
    return lines


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ing = results["ingestion"]
    names = ["ceiling", "per-event"] + [f"pipeline x{w}" for w in ing["pipeline"]]
    values = [ing["ceiling_events_per_s"], ing["per_event_insert_events_per_s"]] + [
        r["events_per_s"] for r in ing["pipeline"].values()
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, values, color=["#555", "#bbb"] + ["#2a7"] * len(ing["pipeline"]))
    ax.set_ylabel("events/s")
    ax.set_title("Ingestion into MongoDB (same documents, same server)")
    fig.tight_layout()
    fig.savefig(RESULTS / "ingestion.png", dpi=110)
    plt.close(fig)

    e2e = results["end_to_end"]
    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [e["rate"] for e in e2e]
    ax.plot(rates, [e["p50_ms"] for e in e2e], marker="o", label="p50")
    ax.plot(rates, [e["p99_ms"] for e in e2e], marker="o", label="p99")
    ax.plot(
        rates,
        [e.get("mean_write_ms", float("nan")) for e in e2e],
        ls="--",
        label="mean batch write",
    )
    ax.axhline(1000, color="#c33", lw=0.8, label="target p99 1 s")
    ax.axvline(ing["ceiling_events_per_s"], color="#555", lw=0.8, ls=":", label="store ceiling")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events/s offered (one tenant)")
    ax.set_ylabel("produce → visible (ms)")
    ax.set_title("End-to-end latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "latency.png", dpi=110)
    plt.close(fig)

    last = results["reads"][-1]["reads"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for scenario in sorted({r["scenario"] for r in last}):
        rows = [r for r in last if r["scenario"] == scenario]
        ax.plot(
            [r["concurrency"] for r in rows],
            [r["p50_ms"] for r in rows],
            marker="o",
            label=scenario,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Reads, store of {results['reads'][-1]['store_size']} events")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "reads.png", dpi=110)
    plt.close(fig)

    if len(results["reads"]) > 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        for scenario in ("cached list", "uncached list", "get by id"):
            xs, ys = [], []
            for level in results["reads"]:
                row = next(
                    (
                        r
                        for r in level["reads"]
                        if r["scenario"] == scenario and r["concurrency"] == 16
                    ),
                    None,
                )
                if row:
                    xs.append(level["store_size"])
                    ys.append(row["p50_ms"])
            ax.plot(xs, ys, marker="o", label=scenario)
        ax.set_yscale("log")
        ax.set_xlabel("events in store")
        ax.set_ylabel("p50 ms at 16 clients")
        ax.set_title("Read latency as the store grows")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "growth.png", dpi=110)
        plt.close(fig)
