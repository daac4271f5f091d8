"""Figures 3, 4 and 5, from whole publishes in child processes.

- 3: the round trip of a publish starts vLLM twice, on the source snapshot
  (safetensors, vLLM's default) and on the published artifact (tensorizer,
  encrypted); engine start to first token is read from both.
- 4: peak resident memory of the publish step, and of a whole Dagster publish run
  (vLLM engines run in their own processes and are not counted).
- 5: a full Dagster publish run against the same work done by plain calls, each in a
  fresh modelpub home, so both fetch the snapshot and start from nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from bench.child import run_child
from bench.figures import Figure

PROMPTS = ["Hello world", "The quick brown fox", "Dagster orchestrates"]
SAFETENSORS = "vLLM default load (safetensors)"


def _home(root: Path, mirror: Path, repo_id: str) -> dict[str, str]:
    """A private modelpub home (catalog, store, keys, cache, Dagster home) as env vars."""
    root.mkdir(parents=True)
    catalog = {
        "hubs": {"bench": {"kind": "git_mirror", "root": str(mirror)}},
        "models": [
            {
                "repo_id": repo_id,
                "hub": "bench",
                "dtype": "float16",
                "encrypt": True,
                "prompts": PROMPTS,
                "max_tokens": 1,  # the round trip's generations time the first token
            }
        ],
    }
    (root / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").touch()
    return {
        "MODELPUB_CATALOG": str(root / "catalog.yaml"),
        "MODELPUB_STORE": str(root / "store"),
        "MODELPUB_KEYS": str(root / "keys"),
        "MODELPUB_CACHE": str(root / "cache"),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }


def first_token_s(engine: dict) -> float:
    return engine["engine_start_s"] + engine["generate_s"]


def memory(model: str, snapshot: Path, work: Path, model_bytes: int) -> list[Figure]:
    result = run_child("publish_step", {"snapshot": str(snapshot), "root": str(work)})
    return [
        Figure(
            "memory",
            model,
            "publish step (write_artifact, encrypted): peak RSS",
            result["peak_rss"] / 1e9,
            "GB",
            "model size",
            model_bytes / 1e9,
            higher_is_better=False,
            target=1.3,
            note=f"of which {result['idle_rss'] / 1e9:.2f} GB is the interpreter with torch "
            "and tensorizer imported",
        )
    ]


def median_run(runs: list[dict]) -> dict:
    """The run of median length; of an even count the lower middle one (of two, the
    faster: the spread noted beside it says how far apart they were)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def spread(plains: list[dict], dagsters: list[dict]) -> str:
    """Every run's seconds, and whether the two kinds' ranges overlap (within noise)."""

    def seconds(runs: list[dict]) -> list[float]:
        return sorted(r["seconds"] for r in runs)

    p, d = seconds(plains), seconds(dagsters)
    shown = (
        f"plain {', '.join(f'{x:.1f}' for x in p)} s, Dagster {', '.join(f'{x:.1f}' for x in d)} s"
    )
    overlap = p[0] <= d[-1] and d[0] <= p[-1]
    return shown + (" (ranges overlap: within noise)" if overlap else " (ranges apart)")


def _publish(kind: str, mirror: Path, repo_id: str, home: Path) -> dict:
    """One publish in a fresh home (nothing cached: it fetches the snapshot too)."""
    try:
        return run_child(kind, {"repo_id": repo_id}, _home(home, mirror, repo_id))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def publish_runs(
    model: str,
    mirror: Path,
    repo_id: str,
    work: Path,
    model_bytes: int,
    repeat: int,
    multiprocess: bool = True,
) -> list[Figure]:
    """Plain and Dagster publishes, `repeat` of each, in the order plain, Dagster, Dagster,
    plain, ... so that neither always runs first (on a cold page cache, a cooler CPU). The
    Dagster figure compares the (lower) medians and notes every run, so its spread shows whether
    a difference is more than noise (the round trip's vLLM engines dominate both and vary
    the most). The multiprocess run, which has no target, runs once where `multiprocess`."""
    runs: dict[str, list[dict]] = {"plain_run": [], "dagster_run": []}
    for i in range(repeat):
        order = ("plain_run", "dagster_run") if i % 2 == 0 else ("dagster_run", "plain_run")
        for kind in order:
            runs[kind].append(_publish(kind, mirror, repo_id, work / f"{kind}{i}"))
    plains, dagsters = runs["plain_run"], runs["dagster_run"]
    plain, dagster = median_run(plains), median_run(dagsters)
    engine_peak = max(e["peak_rss"] for p in plains for e in p["engines"].values())
    run_peak = max(d["peak_rss"] for d in dagsters)
    engines = {
        fmt: min((p["engines"][fmt] for p in plains), key=first_token_s)
        for fmt in ("safetensors", "tensorizer")
    }
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in plain["steps"].items())
    dagster_steps = ", ".join(f"{k} {v:.1f} s" for k, v in dagster["steps"].items())
    figures = [
        Figure(
            "vLLM start",
            model,
            "tensorizer, encrypted: LLM() to first token",
            first_token_s(engines["tensorizer"]),
            "s",
            SAFETENSORS,
            first_token_s(engines["safetensors"]),
            higher_is_better=False,
            target=1.0,
        ),
        Figure(
            "vLLM start",
            model,
            "tensorizer, encrypted: process start to first token",
            engines["tensorizer"]["process_s"],
            "s",
            SAFETENSORS,
            engines["safetensors"]["process_s"],
            higher_is_better=False,
            note="includes importing vLLM in the engine's child process",
        ),
        Figure(
            "memory",
            model,
            "whole Dagster publish run: peak RSS of its own process (vLLM engines apart)",
            run_peak / 1e9,
            "GB",
            "model size",
            model_bytes / 1e9,
            higher_is_better=False,
        ),
        Figure(
            "memory",
            model,
            "vLLM engine of the round trip: peak RSS (the larger of the two)",
            engine_peak / 1e9,
            "GB",
            "model size",
            model_bytes / 1e9,
            higher_is_better=False,
            note="each engine loads the model in float32 on CPU, in its own process",
        ),
        Figure(
            "memory",
            model,
            "whole publish, engines included: run process + both engines, peak RSS",
            (run_peak + 2 * engine_peak) / 1e9,
            "GB",
            "model size",
            model_bytes / 1e9,
            higher_is_better=False,
            note="an upper bound: on CPU the two engines run side by side where memory "
            "allows (one at a time otherwise, and on a GPU); the peaks need not coincide",
        ),
        Figure(
            "Dagster",
            model,
            "full publish run (Dagster job, in process)",
            dagster["seconds"],
            "s",
            "sum of the steps' own work (plain calls)",
            plain["seconds"],
            higher_is_better=False,
            target=1.10,
            note=f"lower medians of {repeat} runs each: {spread(plains, dagsters)}; plain steps: "
            f"{steps}; Dagster steps (start to success events): {dagster_steps}; importing "
            f"Dagster and the definitions took {dagster['import_s']:.1f} s more (once per "
            "process, not counted)",
        ),
    ]
    if multiprocess:
        multi = _publish("dagster_multiprocess_run", mirror, repo_id, work / "multi")
        figures.append(
            Figure(
                "Dagster",
                model,
                "full publish run (multiprocess executor: a process per step, as the daemon "
                "runs it)",
                multi["seconds"],
                "s",
                "sum of the steps' own work (plain calls)",
                plain["seconds"],
                higher_is_better=False,
                note="each step is a process forked from a server that imported the project "
                "once per run; steps (start to success events): "
                + ", ".join(f"{k} {v:.1f} s" for k, v in multi["steps"].items()),
            )
        )
    return figures
