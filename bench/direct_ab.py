"""A/B of the local publish's write: the serializer of another checkout (OLD, e.g. the
commit before O_DIRECT, exported with `git archive`) against this one's, and a raw
buffered write + fsync of the same byte count as the baseline.

    python bench/direct_ab.py SNAPSHOT OUT_DIR OLD_ROOT [ROUNDS] [--recycle]

The source is read as `iter_source_weights` reads it, or with --recycle as the publish
step does (resources/formats/format.py: `SourceCheckpoint.batches(..., recycle=True)`).

Each round runs, alternating, one fresh process per variant; each process writes twice:
its first write is a fresh process's (a forked Dagster step's: fresh page cache, fresh
buffers), the second the steady state. Wall and CPU (getrusage, every thread) per write,
each after a sync and a pause, so that one write's disk work does not land on the next.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))
SETTLE_S = 3


def _usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), ru.ru_utime + ru.ru_stime


def worker(variant: str, root: str, snapshot: str, out: str, size: int, recycle: bool) -> None:
    sys.path.insert(0, root)
    import torch

    from resources.formats import tensorize

    dest, rows = Path(out), []
    data = torch.empty(size, dtype=torch.uint8).fill_(7) if variant == "raw" else None
    if data is not None:
        from bench.throughput import raw_write
    for _ in range(2):
        dest.unlink(missing_ok=True)
        os.sync()
        time.sleep(SETTLE_S)  # the disk done with what came before (the unlink's trims)
        wall, cpu = _usage()
        if data is None:
            source = tensorize.SourceCheckpoint(Path(snapshot), "float16")
            batches = source.batches(tensorize.BATCH_BYTES, recycle=recycle)
            tensorize.serialize(batches, dest, KEY, consume=True)
        else:
            raw_write(data, dest)
        wall2, cpu2 = _usage()
        rows.append({"wall": wall2 - wall, "cpu": cpu2 - cpu, "bytes": dest.stat().st_size})
        rows[-1]["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dest.unlink()
    print(json.dumps(rows))


def run(variant: str, root: str, snapshot: str, out: str, size: int, recycle: bool) -> list[dict]:
    args = [sys.executable, __file__, "--worker", variant, root, snapshot, out, str(size)]
    args += ["--recycle"] if recycle else []
    done = subprocess.run(args, check=True, capture_output=True, text=True, cwd=HERE)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    recycle = "--recycle" in sys.argv
    argv = [a for a in sys.argv if a != "--recycle"]
    snapshot, out_dir, old_root = argv[1:4]
    rounds = int(argv[4]) if len(argv) > 4 else 3
    out = str(Path(out_dir) / "model.tensors")
    results: dict[str, list[list[dict]]] = {"old": [], "new": [], "raw": []}
    size = 0
    for _ in range(rounds):
        for variant, root in (("old", old_root), ("new", str(HERE))):
            results[variant].append(run(variant, root, snapshot, out, 0, recycle))
            size = results[variant][-1][0]["bytes"]
        results["raw"].append(run("raw", str(HERE), snapshot, out, size, recycle))
        print(json.dumps({v: r[-1] for v, r in results.items()}), file=sys.stderr)
    gb = size / 1e9
    source = "recycled batches (the publish step's)" if recycle else "iter_source_weights"
    print(f"{size / 2**30:.2f} GiB written per run; {os.cpu_count()} cores; source: {source}")
    for which, label in ((0, "fresh process (first write)"), (1, "steady state (second write)")):
        print(f"\n{label}: median of {rounds}")
        raw_s = sorted(r[which]["wall"] for r in results["raw"])[rounds // 2]
        for variant, runs in results.items():
            wall = sorted(r[which]["wall"] for r in runs)[rounds // 2]
            cpu = sorted(r[which]["cpu"] for r in runs)[rounds // 2]
            rss = max(r[which]["maxrss_mb"] for r in runs)
            print(
                f"  {variant:4} {gb / wall:5.2f} GB/s  {cpu / gb:5.2f} CPU s/GB  "
                f"{raw_s / wall:4.2f}x raw  (walls {[round(r[which]['wall'], 2) for r in runs]}, "
                f"peak RSS {rss:.0f} MB)"
            )


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(*sys.argv[2:6], int(sys.argv[6]), "--recycle" in sys.argv)
    else:
        main()
