"""Figures 1 and 2: how fast the pipeline writes and reads an artifact, against the
raw speed of the same place (local disk, S3) for the same number of bytes.

Local runs read their input from the page cache (the snapshot was just written or
read) and count a write as done only after fsync, the raw baseline included; a timed
local write and its baseline run in turn, each on a quiet disk (`settle`). Each figure
with a target, and its baseline, is the best of `repeat` runs; the others, there for
context, run once.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

from bench import stages
from bench.figures import Figure, throughput, timed
from resources.formats import tensorize
from resources.formats.artifact import check_files, write_artifact
from resources.formats.checked_read import CheckedRead
from resources.formats.direct import ALIGN, pwrite_all
from resources.formats.streaming import part_size_for
from resources.layout import TENSORS_FILE
from resources.storage import digests
from resources.storage.s3 import S3Store
from resources.storage.store import LocalStore, ObjectStore
from tests.s3_server import IDENTITIES, SeaweedS3

RAW_WRITE = "raw write + fsync (O_DIRECT: the disk's speed)"
CACHED_WRITE = "raw write + fsync, through the page cache"
RAW_READ = "raw read"
BOTO3_PUT = "boto3 upload_file"
BOTO3_GET = "boto3 get_object"
SERIALIZE = "pipeline serialize + encrypt (streamed batches)"
PUBLISH = "publish step: write_artifact, encrypted"
PUBLISH_S3 = "publish step: write_artifact → S3, encrypted, streamed"
# What vLLM's modelpub loader reads with: the store's bytes, each part checked against the
# record before tensorizer decrypts it, one tensor at a time.
DESERIALIZE = "serve load: parts checked, then decrypted (the modelpub loader)"
# tensorizer's own streamed read, straight from the store: no record digest checked.
ITERATE = "iter_deserialized: decrypt + tensorizer's verify_hash, no record check"
# The tensor check as the round trip and `modelpub verify` run it: one read of the object,
# each part checked against the record, then decrypted, the whole file's sha256 (what the
# signature names) computed on the way.
CHECK = "tensor check: one read, digests + iter_deserialized (check_files)"
COLD = " (cold: file evicted from the page cache)"
DTYPE = "float16"
SETTLE_S = 3  # seconds of quiet before a timed local write


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    """Drop this one file's pages from the page cache, so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_all(path: Path, chunk: int = 64 << 20) -> torch.Tensor:
    """The file's bytes in one fresh buffer, read the fastest plain way: every core
    preading its own chunks (one thread alone is slower)."""
    size = path.stat().st_size
    buf = torch.empty(size, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    fd = os.open(path, os.O_RDONLY)

    def read(offset: int) -> None:
        end = min(offset + chunk, size)
        while offset < end:
            offset += os.preadv(fd, [view[offset:end]], offset)

    try:
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(read, range(0, size, chunk)))
    finally:
        os.close(fd)
    return buf


def raw_write(data: torch.Tensor, dest: Path) -> None:
    """The bytes written through the page cache, 64 MiB at a time, then fsynced."""
    view = memoryview(data.numpy())
    with open(dest, "wb", buffering=0) as f:
        for start in range(0, len(view), 64 << 20):
            f.write(view[start : start + (64 << 20)])
        os.fsync(f.fileno())


def aligned(data: torch.Tensor) -> mmap.mmap:
    """A copy of `data` in page-aligned memory padded to whole blocks, as O_DIRECT needs."""
    buffer = mmap.mmap(-1, -(-data.numel() // ALIGN) * ALIGN)
    buffer[: data.numel()] = memoryview(data.numpy())
    return buffer


def raw_write_direct(buffer: mmap.mmap, size: int, dest: Path) -> None:
    """`size` bytes of `buffer` (see `aligned`) written the fastest plain way to a new
    file, as fast as the disk takes them: with O_DIRECT (plain writes where the
    filesystem refuses it), 64 MiB at a time, then cut to size and fsynced. A write
    through the page cache is no steady baseline on a VM: its fresh cache pages cost
    from 0.5 to 3 s/GB with the memory's state."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with memoryview(buffer) as view:
            for start in range(0, len(view), 64 << 20):
                pwrite_all(fd, view[start : start + (64 << 20)], start)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def best(repeat: int, run: Callable[[], None], before: Callable[[], None] = lambda: None) -> float:
    """The fastest of `repeat` runs of `run`, each after an untimed `before`."""
    return best_usage(repeat, run, before).wall


def best_usage(
    repeat: int, run: Callable[[], None], before: Callable[[], None] = lambda: None
) -> stages.Usage:
    """The wall and CPU seconds of the fastest of `repeat` runs of `run`."""
    usages = []
    for _ in range(repeat):
        before()
        usages.append(stages.measure(run))
    return min(usages, key=lambda usage: usage.wall)


def settle() -> None:
    """Start a timed write on a quiet disk: what earlier runs wrote (and their unlinks'
    trims) flushed first, so that one run's disk work does not land on the next's time."""
    os.sync()
    time.sleep(SETTLE_S)


def alternate(
    repeat: int,
    runs: dict[str, Callable[[], None]],
    before: Callable[[], None],
    server_pid: int | None = None,
) -> dict[str, stages.Usage]:
    """The fastest of `repeat` runs of each of `runs`, taken in turn (so that a change in
    the machine's state lands on all of them alike), each after an untimed `before` and a
    `settle`; `server_pid`: the S3 server's CPU counted too."""
    usages: dict[str, list[stages.Usage]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            before()
            settle()
            usages[name].append(stages.measure(run, server_pid))
    return {name: min(found, key=lambda usage: usage.wall) for name, found in usages.items()}


def ceiling(
    model: str, name: str, usage: stages.Usage, num_bytes: int, raw: str, raw_s: float
) -> Figure:
    """How fast `name` could go with every core busy for its whole run, by the CPU it
    spent per GB (the same bound as the S3 tensor check's): against the raw baseline."""
    cores = os.cpu_count() or 1
    cpu_per_gb = usage.cpu / (num_bytes / 1e9)
    return Figure(
        "breakdown",
        model,
        f"{name}: ceiling on {cores} cores, by its {cpu_per_gb:.2f} CPU s/GB",
        cores / cpu_per_gb,
        "GB/s",
        raw,
        num_bytes / 1e9 / raw_s,
        higher_is_better=True,
        note=f"it kept {usage.cores_busy:.2f} cores busy; on 16 cores the same CPU per GB "
        f"would allow {16 / cpu_per_gb:.1f} GB/s",
    )


def tensorizer_save(weights: dict, dest: Path, key: bytes | None, fsync: bool = True) -> None:
    """tensorizer on its own, as its docs use it (then fsync): the library's speed."""
    from tensorizer import EncryptionParams, TensorSerializer

    serializer = TensorSerializer(str(dest), encryption=EncryptionParams(key) if key else None)
    serializer.write_state_dict(weights)
    serializer.close()
    if fsync:
        fsync_path(dest)


def publish_local(model: str, snapshot: Path, work: Path, key: bytes, repeat: int) -> list[Figure]:
    """Figure 1, local disk: tensorizer save (plain, encrypted), the pipeline's
    serialize and its whole publish step, against writing the same bytes raw."""
    out = work / "out.tensors"
    weights: dict = {}

    def load() -> None:
        weights.clear()
        weights.update(tensorize.load_source_weights(snapshot, DTYPE))

    def pipeline_serialize() -> None:
        tensorize.serialize(tensorize.iter_source_weights(snapshot, DTYPE), out, key, consume=True)

    runs = {
        "tensorizer save": best(1, lambda: tensorizer_save(weights, out, None), load),
        "tensorizer save + encrypt": best(1, lambda: tensorizer_save(weights, out, key), load),
    }
    weights.clear()
    runs[SERIALIZE] = best(1, pipeline_serialize)
    data = read_all(out)
    size, block_aligned = data.numel(), aligned(data)
    out.unlink()
    store = LocalStore(work / "store")

    def write_raw() -> None:
        raw_write_direct(block_aligned, size, out)

    def write_cached() -> None:
        raw_write(data, out)

    def publish() -> None:
        write_artifact(store, "bench/v1", snapshot, DTYPE, key, work / "staging")
        for name in store.list("bench/v1"):
            fsync_path(store.path(name))

    def remove_outputs() -> None:
        out.unlink(missing_ok=True)
        shutil.rmtree(store.root / "bench", ignore_errors=True)

    (work / "staging").mkdir(exist_ok=True)
    timed_runs = {RAW_WRITE: write_raw, CACHED_WRITE: write_cached, PUBLISH: publish}
    best_runs = alternate(repeat, timed_runs, remove_outputs)
    data.resize_(0)
    block_aligned.close()
    remove_outputs()
    runs.update({name: usage.wall for name, usage in best_runs.items()})
    published = best_runs[PUBLISH]
    notes = {
        SERIALIZE: "reads the source safetensors (page cache) as it goes",
        PUBLISH: "reads the source safetensors (page cache), hashes every file, "
        "stores them durably",
        CACHED_WRITE: "fresh page cache costs this VM from 0.5 to 3 CPU s/GB with the "
        "memory's state: no steady baseline",
    }
    return [
        *throughput("publish (local disk)", model, size, runs, RAW_WRITE, {PUBLISH: 0.5}, notes),
        ceiling(model, PUBLISH, published, size, RAW_WRITE, runs[RAW_WRITE]),
    ]


def bench_store(s3: SeaweedS3) -> S3Store:
    """The pipeline's S3 store on the bench server, as the settings would open it."""
    from resources.settings import ARTIFACT_S3, S3Env

    who = IDENTITIES["admin"]
    env = {
        f"{ARTIFACT_S3}_ENDPOINT_URL": s3.endpoint,
        f"{ARTIFACT_S3}_REGION": "us-east-1",
        f"{ARTIFACT_S3}_ACCESS_KEY_ID": who.access_key,
        f"{ARTIFACT_S3}_SECRET_ACCESS_KEY": who.secret_key,
    }
    return S3Store.from_uri("s3://bench/pipeline", S3Env.from_env(env, ARTIFACT_S3))


def publish_s3(
    model: str, snapshot: Path, work: Path, key: bytes, s3: SeaweedS3, repeat: int
) -> list[Figure]:
    """Figure 1, S3: the pipeline's publish step (serialize, encrypt and upload at once)
    against boto3 uploading the same bytes, the staging disk it used, and where its time
    went (bench/stages.py). The object it publishes is the one `load_s3` reads."""
    store, client, pid = bench_store(s3), s3.client(), s3.process.pid
    raw, published = work / "raw.bin", []

    def publish() -> None:
        published.append(write_artifact(store, "pub", snapshot, DTYPE, key, work / "s3-staging"))

    def fetch_raw() -> None:
        """The bytes published, for boto3 to upload the same (untimed)."""
        if published and not raw.exists():
            store.get_file(f"pub/{TENSORS_FILE}", raw)

    best_runs = alternate(
        repeat,
        {PUBLISH_S3: publish, BOTO3_PUT: lambda: client.upload_file(str(raw), "bench", "raw.bin")},
        fetch_raw,
        pid,
    )
    publish_usage, put = best_runs[PUBLISH_S3], best_runs[BOTO3_PUT]
    size = raw.stat().st_size
    raw.unlink()
    runs = {PUBLISH_S3: publish_usage.wall, BOTO3_PUT: put.wall}
    model_bytes = sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))
    staging_peak = Figure(
        "memory",
        model,
        "publish step → S3: peak staging disk",
        max(p.peak_staging for p in published) / 1e9,
        "GB",
        "model size",
        model_bytes / 1e9,
        higher_is_better=False,
        target=0.15,
        note="bounded by a 64 MiB batch + 9 parts of 16 MiB, whatever the largest tensor",
    )
    notes = {PUBLISH_S3: "reads the source (page cache), parts upload as later ones encrypt"}
    figures = throughput("publish (S3)", model, size, runs, BOTO3_PUT, {PUBLISH_S3: 0.9}, notes)
    gb = size / 1e9
    return [
        *figures,
        staging_peak,
        stages.busy(model, PUBLISH_S3, publish_usage),
        stages.busy(model, BOTO3_PUT, put),
        *stages.stage_figures(model, snapshot, work, key, store, pid, publish_usage, gb),
    ]


def load_local(model: str, snapshot: Path, work: Path, key: bytes, repeat: int) -> list[Figure]:
    """Figure 2, local: reading an artifact back against reading its raw bytes, and
    against loading the same weights from safetensors and torch.save files."""
    from safetensors.torch import load_file
    from tensorizer import TensorDeserializer

    weights = tensorize.load_source_weights(snapshot, DTYPE)
    plain, encrypted, pt = work / "plain.tensors", work / "enc.tensors", work / "weights.pt"
    torch.save(weights, pt)
    tensorize.serialize(weights, plain, None)
    again = tensorize.load_source_weights(snapshot, DTYPE)
    entry = tensorize.serialize(again, encrypted, key).entry
    del weights

    def tensorizer_load(verify: bool) -> Callable[[], None]:
        def run() -> None:
            # not lazy: every tensor is read (and verified) before the constructor returns
            with TensorDeserializer(str(plain), device="cpu", verify_hash=verify):
                pass

        return run

    files = sorted(snapshot.glob("*.safetensors"))
    read_encrypted = partial(read_all, encrypted)

    def serve_load() -> None:
        stream = CheckedRead(encrypted.open("rb", buffering=0), entry, whole=False)
        sum(1 for _ in tensorize.iter_deserialized(stream, key))
        assert stream.finish().matches(entry)

    loaded = best_usage(repeat, serve_load)
    loaded_cold = best_usage(repeat, serve_load, lambda: evict(encrypted))
    warm = {
        RAW_READ: best(repeat, read_encrypted),
        "tensorizer load": best(1, tensorizer_load(False)),
        "tensorizer load + verify_hash": best(1, tensorizer_load(True)),
        DESERIALIZE: loaded.wall,
        ITERATE: best(1, lambda: sum(1 for _ in tensorize.iter_deserialized(str(encrypted), key))),
        "safetensors load_file": best(1, lambda: [load_file(f, backend="pread") for f in files]),
        "torch.load": best(1, lambda: torch.load(pt, weights_only=True)),
    }
    cold = {
        RAW_READ + COLD: best(repeat, read_encrypted, lambda: evict(encrypted)),
        DESERIALIZE + COLD: loaded_cold.wall,
    }
    size = encrypted.stat().st_size
    for path in (plain, encrypted, pt):
        path.unlink()
    notes = {
        "safetensors load_file": "pread backend: reads every byte (the default mmap "
        "backend defers reading to first use)"
    }
    return [
        *throughput("load (local disk)", model, size, warm, RAW_READ, {DESERIALIZE: 0.6}, notes),
        *throughput(
            "load (local disk)", model, size, cold, RAW_READ + COLD, {DESERIALIZE + COLD: 0.6}
        ),
        ceiling(model, DESERIALIZE, loaded, size, RAW_READ, warm[RAW_READ]),
        ceiling(
            model, DESERIALIZE + COLD, loaded_cold, size, RAW_READ + COLD, cold[RAW_READ + COLD]
        ),
    ]


def load_s3(model: str, key: bytes, s3: SeaweedS3, work: Path, repeat: int) -> list[Figure]:
    """Figure 2, S3: the pipeline's read-back of what `publish_s3` published against one
    boto3 GET of the same object, and how busy the cores were."""
    client, store, pid = s3.client(), bench_store(s3), s3.process.pid
    name = store._full(f"pub/{TENSORS_FILE}")
    size = client.head_object(Bucket="bench", Key=name)["ContentLength"]

    def boto3_get() -> None:
        body = client.get_object(Bucket="bench", Key=name)["Body"]
        while body.read(64 << 20):
            pass

    source = (f"s3://bench/{name}", key, s3.stream_kwargs())
    scheme = {"part_size": part_size_for(size)}  # as the streamed publish recorded it
    files = {TENSORS_FILE: digests.recompute(scheme, store.read_chunks(f"pub/{TENSORS_FILE}"))}
    best_runs = alternate(
        repeat,
        {BOTO3_GET: boto3_get, CHECK: lambda: tensor_check(store, "pub", files, key)},
        lambda: None,
        pid,
    )
    get, check = best_runs[BOTO3_GET], best_runs[CHECK]
    runs = {
        BOTO3_GET: get.wall,
        ITERATE: timed(lambda: sum(1 for _ in tensorize.iter_deserialized(*source))),
        CHECK: check.wall,
    }
    local = work / "check" / "pub" / TENSORS_FILE
    local.parent.mkdir(parents=True, exist_ok=True)
    store.get_file(f"pub/{TENSORS_FILE}", local)
    alone = stages.measure(lambda: tensor_check(LocalStore(work / "check"), "pub", files, key))
    shutil.rmtree(work / "check")
    gb = size / 1e9
    verify_alone = Figure(
        "breakdown",
        model,
        "tensor check alone: digests + decrypt, from the page cache",
        alone.cpu / gb,
        "CPU s/GB",
        f"{CHECK} ← S3: CPU of this process + the server",
        check.cpu / gb,
        higher_is_better=False,
    )
    get_cpu = Figure(
        "breakdown",
        model,
        f"{BOTO3_GET}: CPU of this process + the server",
        get.cpu / gb,
        "CPU s/GB",
        f"{CHECK} ← S3: CPU of this process + the server",
        check.cpu / gb,
        higher_is_better=False,
    )
    return [
        *throughput("load (S3)", model, size, runs, BOTO3_GET, {CHECK: 0.45}),
        stages.busy(model, f"{CHECK} ← S3", check),
        stages.busy(model, BOTO3_GET, get),
        verify_alone,
        get_cpu,
    ]


def tensor_check(store: ObjectStore, prefix: str, files: dict[str, dict], key: bytes) -> None:
    """The round trip's and `modelpub verify`'s read of the tensors: each file read once,
    each part checked against the record before tensorizer decrypts it."""

    def read(stream) -> None:
        sum(1 for _ in tensorize.iter_deserialized(stream, key))

    checks = check_files(store, prefix, files, dict.fromkeys(files, read))
    assert all(c.matches for c in checks), checks


def size_sweep(model: str, snapshot: Path, work: Path, key: bytes, s3: SeaweedS3) -> list[Figure]:
    """Seconds per GB of the publish step to S3 and of the round-trip tensor check's read
    from S3, each against boto3 moving the same bytes: one point of the sweep."""
    store = bench_store(s3)
    client = s3.client()
    prefix = f"sweep/{model}"
    start = time.perf_counter()
    written = write_artifact(store, prefix, snapshot, DTYPE, key, work / "sweep-staging")
    publish_s = time.perf_counter() - start
    name = f"{prefix}/{TENSORS_FILE}"
    size = written.files[TENSORS_FILE]["size"]
    raw = work / "sweep.bin"
    store.get_file(name, raw)
    put_s = timed(lambda: client.upload_file(str(raw), "bench", "sweep.bin"))
    raw.unlink()

    def boto3_get() -> None:
        body = client.get_object(Bucket="bench", Key="sweep.bin")["Body"]
        while body.read(64 << 20):
            pass

    get_s = timed(boto3_get)
    tensors = {TENSORS_FILE: written.files[TENSORS_FILE]}
    check_s = timed(lambda: tensor_check(store, prefix, tensors, key))
    gb = size / 1e9
    label = f"{model} ({gb:.2f} GB)"
    return [
        per_gb(label, "publish step → S3", publish_s, BOTO3_PUT, put_s, gb),
        per_gb(
            label,
            "round-trip check ← S3 (one read: digests + iter_deserialized)",
            check_s,
            BOTO3_GET,
            get_s,
            gb,
        ),
    ]


def per_gb(
    label: str, name: str, seconds: float, baseline: str, base_s: float, gb: float
) -> Figure:
    """A size sweep figure: seconds per GB against the baseline's, lower is better."""
    return Figure(
        "size sweep",
        label,
        name,
        seconds / gb,
        "s/GB",
        baseline,
        base_s / gb,
        higher_is_better=False,
    )


def size_sweep_local(model: str, snapshot: Path, work: Path) -> list[Figure]:
    """One point of the local size sweep: the publish step in a process of its own
    (encrypted, to a local store, fsynced) in s/GB against a raw write + fsync of the same
    bytes, and its peak RSS against the model's size: both should stay flat in size.
    Each starts on a quiet disk (`settle`)."""
    from bench.child import run_child

    settle()
    result = run_child("publish_step", {"snapshot": str(snapshot), "root": str(work / "sweep")})
    tensors = work / "sweep" / "store" / "bench" / "v1" / TENSORS_FILE
    data = read_all(tensors)
    size, block_aligned = data.numel(), aligned(data)
    del data
    shutil.rmtree(work / "sweep")
    raw = work / "sweep-raw.bin"
    settle()
    write_s = timed(lambda: raw_write_direct(block_aligned, size, raw))
    block_aligned.close()
    raw.unlink()
    gb = size / 1e9
    label = f"{model} ({gb:.2f} GB)"
    return [
        per_gb(
            label, "publish step → local disk, encrypted", result["seconds"], RAW_WRITE, write_s, gb
        ),
        Figure(
            "size sweep",
            label,
            "publish step: peak RSS above the idle interpreter",
            (result["peak_rss"] - result["idle_rss"]) / 1e9,
            "GB",
            "model size",
            gb,
            higher_is_better=False,
        ),
    ]
