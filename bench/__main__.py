"""`python -m bench [--smoke]`: measure the pipeline against the machine's limits.

Writes results.json, results.md (the table, also printed) and results.png into
--out (bench/results by default). `--smoke` runs every figure on the tiny model only (but
the multiprocess Dagster run), its vLLM engines forked by an engine host where
MODELPUB_ENGINE_HOST names one: a quick check that the bench works, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report, runs, throughput
from bench.figures import Figure
from bench.models import (
    LARGE,
    TINY,
    ModelSpec,
    make_mirror_repo,
    weights_bytes,
    write_large_model,
)
from bench.s3server import s3_server
from resources.vllm.engine_host import HOST_ENV

MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


STARTED = time.perf_counter()


def log(figures: list[Figure]) -> list[Figure]:
    """Print each figure as it is measured, with the minutes since the bench started."""
    minutes = (time.perf_counter() - STARTED) / 60
    for f in figures:
        print(
            f"  [{minutes:4.1f} min] {f.group} | {f.name}: {f.value:.3g} {f.unit}, "
            f"{f.ratio:.2f}× {f.baseline}",
            file=sys.stderr,
            flush=True,
        )
    return figures


def bench_model(spec: ModelSpec, work: Path, repeat: int, smoke: bool) -> list[Figure]:
    """Every figure for one model, its point of the size sweep too; `smoke`: the multiprocess
    Dagster run left out (tests/test_deploy.py and tests/test_daemon.py run that executor)."""
    from tensorizer import EncryptionParams

    print(f"{spec.label}: making the model", file=sys.stderr, flush=True)
    mirror = work / "mirror"
    snapshot = make_mirror_repo(mirror, spec)
    size = weights_bytes(snapshot)
    key = EncryptionParams.random().key
    figures = []
    figures += log(throughput.publish_local(spec.label, snapshot, work, key, repeat))
    figures += log(throughput.load_local(spec.label, snapshot, work, key, repeat))
    with s3_server("bench") as s3:  # stopped before the vLLM runs: it holds memory
        figures += log(throughput.publish_s3(spec.label, snapshot, work, key, s3, repeat))
        figures += log(throughput.load_s3(spec.label, key, s3, work, repeat))
        if smoke or spec == LARGE:
            figures += log(throughput.size_sweep(spec.label, snapshot, work, key, s3))
    if smoke or spec == LARGE:
        figures += log(throughput.size_sweep_local(spec.label, snapshot, work))
    figures += log(runs.memory(spec.label, snapshot, work / "memory", size))
    figures += log(
        runs.publish_runs(
            spec.label, mirror, spec.name, work / "runs", size, repeat, multiprocess=not smoke
        )
    )
    return figures


SWEEP_LAYERS = (1, 3, 9)  # 0.35, 0.53 and 1.05 GB fp16; the 1B model (20 layers) is 2.0 GB


def sweep_models() -> list[Figure]:
    """The size sweep's smaller points: the 1B model's shape with fewer layers."""
    from tensorizer import EncryptionParams

    key = EncryptionParams.random().key
    figures: list[Figure] = []
    work = Path(tempfile.mkdtemp(prefix="modelpub-bench-sweep-"))
    try:
        snapshots = []
        for layers in SWEEP_LAYERS:
            print(f"size sweep: making a {layers}-layer model", file=sys.stderr, flush=True)
            snapshots.append(work / f"llama-{layers}l")
            write_large_model(snapshots[-1], layers)
        for snapshot in snapshots:  # local first: no S3 server writing its volumes meanwhile
            figures += log(throughput.size_sweep_local(snapshot.name, snapshot, work))
        with s3_server("bench") as s3:
            for snapshot in snapshots:
                figures += log(throughput.size_sweep(snapshot.name, snapshot, work, key, s3))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny model only, one repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--repeat", type=int, default=None, help="runs per local figure")
    args = parser.parse_args(argv)
    if not args.smoke:  # a measurement: every vLLM engine starts as a user's does
        os.environ.pop(HOST_ENV, None)
    else:  # a check that the bench works: no quiet disk needed
        throughput.SETTLE_S = 0
    models = [TINY] if args.smoke else [TINY, LARGE]
    repeat = args.repeat or (1 if args.smoke else 2)
    started, load_before = time.perf_counter(), _load()
    figures: list[Figure] = []
    for spec in models:
        work = Path(tempfile.mkdtemp(prefix=f"modelpub-bench-{spec.label}-"))
        try:
            # the tiny model's figures are fixed costs, not throughput: measured once
            runs = repeat if spec == LARGE else 1
            figures += bench_model(spec, work, runs, smoke=args.smoke)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not args.smoke:
        figures += sweep_models()
    results = {
        "smoke": args.smoke,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "load_before": load_before,
        "load_after": _load(),
        "duration_s": time.perf_counter() - started,
        "models": {s.label: s.name for s in models},
        "figures": [f.to_json() for f in figures],
    }
    print(report.write(results, args.out))
    return 0


if __name__ == "__main__":
    if os.environ.pop(MMAP_THRESHOLD, None) is None:
        # Every allocation of 1 MiB or more comes fresh from the kernel and goes back on
        # free, as in a new process: otherwise a loader measured after another reuses its
        # freed heap and skips the page faults (about 1.5 GB/s here) that a real load
        # pays. glibc reads this at start, hence the re-exec; children do not inherit it.
        env = {**os.environ, MMAP_THRESHOLD: str(1 << 20)}
        os.execve(sys.executable, [sys.executable, "-m", "bench", *sys.argv[1:]], env)
    sys.exit(main())
