"""Quick local publish/load measurement against raw write+fsync / raw read (perf work).

Run: MALLOC_MMAP_THRESHOLD_=1048576 PYTHONPATH=. python -m bench.perf_local [what] [repeat]
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

from bench.models import write_large_model
from bench.throughput import evict, fsync_path, raw_write, read_all
from resources.formats import tensorize
from resources.formats.artifact import write_artifact
from resources.storage.store import LocalStore

WORK = Path(os.environ.get("PERF_WORK", "/tmp/pb25"))
LAYERS = int(os.environ.get("PERF_LAYERS", "6"))
KEY = bytes(range(32))


CPU: list[float] = []


def timed(run) -> float:
    """Wall seconds of `run`; its process CPU seconds go to CPU."""
    start, cpu = time.perf_counter(), time.process_time()
    run()
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    snapshot = WORK / f"model{LAYERS}"
    if not snapshot.exists():
        write_large_model(snapshot, LAYERS)
    for f in snapshot.glob("*.safetensors"):
        read_all(f)  # page cache
    store = LocalStore(WORK / "store")
    staging = WORK / "staging"
    staging.mkdir(exist_ok=True)
    counter = iter(range(10**6))
    out = WORK / "raw.bin"

    def publish() -> None:
        prefix = f"bench/v{next(counter)}"
        write_artifact(store, prefix, snapshot, "float16", KEY, staging)
        for name in store.list(prefix):
            fsync_path(store.path(name))

    shutil.rmtree(WORK / "store", ignore_errors=True)
    publish()
    art = store.path("bench/v0/model.tensors")
    data = read_all(art)

    raw = partial(raw_write, data, out)

    size = data.numel()
    mb = size / 1e6
    if what in ("all", "publish"):
        raws, pubs = [], []
        for i in range(repeat):
            raws.append(timed(raw))
            pubs.append(timed(publish))
            shutil.rmtree(WORK / "store" / "bench" / f"v{i + 1}", ignore_errors=True)
            print(
                f"publish: raw {mb / raws[-1]:7.0f} MB/s  publish {mb / pubs[-1]:6.0f} MB/s  "
                f"ratio {raws[-1] / pubs[-1]:.3f}  cpu raw {CPU[-2]:.2f} publish {CPU[-1]:.2f}",
                flush=True,
            )
        print(
            f"publish BEST: raw {mb / min(raws):7.0f} MB/s  publish {mb / min(pubs):6.0f} MB/s  "
            f"ratio {min(raws) / min(pubs):.3f}",
            flush=True,
        )
    del data, raw
    out.unlink(missing_ok=True)
    if what in ("all", "load"):
        path = str(art)
        runs: dict[str, list[float]] = {"raw": [], "load": [], "raw cold": [], "load cold": []}
        for _ in range(repeat):
            runs["raw"].append(timed(lambda: read_all(art)))
            runs["load"].append(timed(lambda: tensorize.deserialize(path, KEY)))
            evict(art)
            runs["raw cold"].append(timed(lambda: read_all(art)))
            evict(art)
            runs["load cold"].append(timed(lambda: tensorize.deserialize(path, KEY)))
            print(
                "load: "
                + "  ".join(f"{k} {mb / v[-1]:5.0f}" for k, v in runs.items())
                + f"  MB/s; cpu load {CPU[-3]:.2f}/{CPU[-1]:.2f}",
                flush=True,
            )
        best = {k: min(v) for k, v in runs.items()}
        print(
            f"load BEST: warm raw {mb / best['raw']:5.0f} load {mb / best['load']:5.0f} MB/s "
            f"ratio {best['raw'] / best['load']:.3f} | cold raw {mb / best['raw cold']:5.0f} "
            f"load {mb / best['load cold']:5.0f} ratio {best['raw cold'] / best['load cold']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
