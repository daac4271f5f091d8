"""`python -m bench --smoke`: every figure of the benchmark, on the tiny model.

Not a measurement (the tiny model's numbers mean nothing): it proves that `make bench`
works end to end and that each figure comes with the baseline it is a ratio to.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

GROUPS = {
    "publish (local disk)",
    "publish (S3)",
    "load (local disk)",
    "load (S3)",
    "vLLM start",
    "memory",
    "Dagster",
    "size sweep",
    "breakdown",
}


@pytest.mark.vllm
@pytest.mark.s3
def test_smoke_bench_reports_every_figure_with_its_baseline(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    figures = results["figures"]
    assert {f["group"] for f in figures} == GROUPS
    for f in figures:
        assert f["value"] > 0 and f["baseline_value"] > 0, f
        assert math.isfinite(f["ratio"]) and f["ratio"] == pytest.approx(
            f["value"] / f["baseline_value"]
        ), f
        assert f["baseline"] and f["baseline"] != f["name"], f
    targeted = {f["group"] for f in figures if f["target"] is not None}
    # the sweep shows a trend and the breakdown explains the targets: neither has one
    assert targeted == GROUPS - {"size sweep", "breakdown"}
    assert all(isinstance(f["meets_target"], bool) for f in figures if f["target"] is not None)
    table = (tmp_path / "results.md").read_text()
    assert table in done.stdout
    assert all(f"| {f['name']} |" in table for f in figures)
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
    names = [f["name"] for f in figures]
    # the paths the pipeline really takes are timed, each labelled by its code path
    for path in (
        "iter_deserialized",
        "full publish run (Dagster job, in process)",  # the multiprocess run is full-bench only
        "vLLM engine of the round trip",
        "write_artifact → S3, encrypted, streamed",
        "publish step → local disk, encrypted",  # the local size sweep
        "publish step: peak RSS above the idle interpreter",
        "peak staging disk",
        "cores busy",
        "upload the parts: the S3 server",
    ):
        assert any(path in name for name in names), (path, names)
