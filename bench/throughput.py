"""Figures 1 and 2: how fast the pipeline writes and reads an artifact, against the
raw speed of the same place (local disk, S3) for the same number of bytes.

Local runs read their input from the page cache (the snapshot was just written or
read) and count a write as done only after fsync, the raw baseline included. Each
figure is the best of `repeat` runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

from bench.figures import Figure, throughput, timed
from resources import tensorize
from resources.formats.artifact import write_artifact
from resources.layout import TENSORS_FILE
from resources.storage.store import LocalStore
from tests.s3_server import SeaweedS3

RAW_WRITE = "raw write + fsync"
RAW_READ = "raw read"
BOTO3_PUT = "boto3 upload_file"
BOTO3_GET = "boto3 get_object"
SERIALIZE = "pipeline serialize + encrypt (streamed batches)"
PUBLISH = "publish step: write_artifact, encrypted"
PREVIOUS = "publish step before this change (tensors only)"
DESERIALIZE = "deserialize: decrypt + verify_hash (pipeline)"
# What the blocking tensor check reads with: one tensor at a time, one reader.
ITERATE = "iter_deserialized: decrypt + verify_hash, streamed (the tensor check's read)"
COLD = " (cold: file evicted from the page cache)"
DTYPE = "float16"


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
    view = memoryview(data.numpy())
    with open(dest, "wb", buffering=0) as f:
        for start in range(0, len(view), 64 << 20):
            f.write(view[start : start + (64 << 20)])
        os.fsync(f.fileno())


def best(repeat: int, run: Callable[[], None], before: Callable[[], None] = lambda: None) -> float:
    """The fastest of `repeat` runs of `run`, each after an untimed `before`."""
    times = []
    for _ in range(repeat):
        before()
        times.append(timed(run))
    return min(times)


def tensorizer_save(weights: dict, dest: Path, key: bytes | None, fsync: bool = True) -> None:
    """tensorizer on its own, as its docs use it (then fsync): the library's speed."""
    from tensorizer import EncryptionParams, TensorSerializer

    serializer = TensorSerializer(str(dest), encryption=EncryptionParams(key) if key else None)
    serializer.write_state_dict(weights)
    serializer.close()
    if fsync:
        fsync_path(dest)


def previous_write_artifact(snapshot: Path, staging: Path, key: bytes, store, prefix: str):
    """The publish step's tensors as write_artifact wrote them before the fast path, kept
    to show the change in the same run: every tensor in memory at once, tensorizer's
    save (which decrypts each tensor back after writing it), the file read again to
    hash it, then copied into the store."""
    staged = staging / "previous.tensors"
    tensorizer_save(tensorize.load_source_weights(snapshot, DTYPE), staged, key, fsync=False)
    tensorize.sha256_file(staged)
    store.put_file(f"{prefix}/{TENSORS_FILE}", staged)
    staged.unlink()


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
        "tensorizer save": best(repeat, lambda: tensorizer_save(weights, out, None), load),
        "tensorizer save + encrypt": best(repeat, lambda: tensorizer_save(weights, out, key), load),
    }
    weights.clear()
    runs[SERIALIZE] = best(repeat, pipeline_serialize)
    data = read_all(out)
    size = data.numel()
    runs[RAW_WRITE] = best(repeat, lambda: raw_write(data, out))
    data.resize_(0)  # free it: the publish runs next
    out.unlink()
    store, counter = LocalStore(work / "store"), iter(range(1000))

    def publish() -> None:
        prefix = f"bench/v{next(counter)}"
        write_artifact(store, prefix, snapshot, DTYPE, key, work / "staging")
        for name in store.list(prefix):
            fsync_path(store.path(name))

    def previous() -> None:
        prefix = f"bench/v{next(counter)}"
        previous_write_artifact(snapshot, work / "staging", key, store, prefix)
        for name in store.list(prefix):
            fsync_path(store.path(name))

    (work / "staging").mkdir(exist_ok=True)
    runs[PUBLISH] = best(repeat, publish)
    runs[PREVIOUS] = best(repeat, previous)
    notes = {
        SERIALIZE: "reads the source safetensors (page cache) as it goes",
        PUBLISH: "reads the source safetensors (page cache), hashes every file, "
        "stores them durably",
        PREVIOUS: "all weights in memory, tensorizer save + encrypt, re-read to hash, "
        "copied into the store",
    }
    return throughput("publish (local disk)", model, size, runs, RAW_WRITE, {PUBLISH: 0.85}, notes)


def publish_s3(model: str, snapshot: Path, work: Path, key: bytes, s3: SeaweedS3) -> list[Figure]:
    """Figure 1, S3: tensorizer's own S3 writer against boto3 uploading the same bytes."""
    from tensorizer import EncryptionParams, TensorSerializer
    from tensorizer.stream_io import open_stream

    def save(k: bytes | None, name: str) -> float:
        weights = tensorize.load_source_weights(snapshot, DTYPE)

        def run() -> None:
            with open_stream(f"s3://bench/{name}", "wb", **s3.stream_kwargs()) as stream:
                serializer = TensorSerializer(stream, encryption=EncryptionParams(k) if k else None)
                serializer.write_state_dict(weights)
                serializer.close()

        return timed(run)

    runs = {
        "tensorizer → S3": save(None, "plain.tensors"),
        "tensorizer + encrypt → S3": save(key, "model.tensors"),
    }
    raw = work / "raw.bin"
    client = s3.client()
    client.download_file("bench", "model.tensors", str(raw))
    runs[BOTO3_PUT] = timed(lambda: client.upload_file(str(raw), "bench", "raw.bin"))
    size = raw.stat().st_size
    raw.unlink()
    return throughput("publish (S3)", model, size, runs, BOTO3_PUT)


def load_local(model: str, snapshot: Path, work: Path, key: bytes, repeat: int) -> list[Figure]:
    """Figure 2, local: reading an artifact back against reading its raw bytes, and
    against loading the same weights from safetensors and torch.save files."""
    from safetensors.torch import load_file
    from tensorizer import TensorDeserializer

    weights = tensorize.load_source_weights(snapshot, DTYPE)
    plain, encrypted, pt = work / "plain.tensors", work / "enc.tensors", work / "weights.pt"
    torch.save(weights, pt)
    tensorize.serialize(weights, plain, None)
    tensorize.serialize(tensorize.load_source_weights(snapshot, DTYPE), encrypted, key)
    del weights

    def tensorizer_load(verify: bool) -> Callable[[], None]:
        def run() -> None:
            # not lazy: every tensor is read (and verified) before the constructor returns
            with TensorDeserializer(str(plain), device="cpu", verify_hash=verify):
                pass

        return run

    files = sorted(snapshot.glob("*.safetensors"))
    read_encrypted = partial(read_all, encrypted)
    source = (str(encrypted), key)
    deserialize = partial(tensorize.deserialize, *source)
    warm = {
        RAW_READ: best(repeat, read_encrypted),
        "tensorizer load": best(repeat, tensorizer_load(False)),
        "tensorizer load + verify_hash": best(repeat, tensorizer_load(True)),
        DESERIALIZE: best(repeat, deserialize),
        ITERATE: best(repeat, lambda: sum(1 for _ in tensorize.iter_deserialized(*source))),
        "safetensors load_file": best(
            repeat, lambda: [load_file(f, backend="pread") for f in files]
        ),
        "torch.load": best(repeat, lambda: torch.load(pt, weights_only=True)),
    }
    cold = {
        RAW_READ + COLD: best(repeat, read_encrypted, lambda: evict(encrypted)),
        DESERIALIZE + COLD: best(repeat, deserialize, lambda: evict(encrypted)),
    }
    size = encrypted.stat().st_size
    for path in (plain, encrypted, pt):
        path.unlink()
    notes = {
        "safetensors load_file": "pread backend: reads every byte (the default mmap "
        "backend defers reading to first use)"
    }
    return throughput(
        "load (local disk)", model, size, warm, RAW_READ, {DESERIALIZE: 0.9}, notes
    ) + throughput(
        "load (local disk)", model, size, cold, RAW_READ + COLD, {DESERIALIZE + COLD: 0.9}
    )


def load_s3(model: str, key: bytes, s3: SeaweedS3) -> list[Figure]:
    """Figure 2, S3: the pipeline's read-back against one boto3 GET of the same object."""
    client = s3.client()
    size = client.head_object(Bucket="bench", Key="model.tensors")["ContentLength"]

    def boto3_get() -> None:
        body = client.get_object(Bucket="bench", Key="model.tensors")["Body"]
        while body.read(64 << 20):
            pass

    runs = {
        BOTO3_GET: timed(boto3_get),
        "S3 → deserialize: decrypt + verify_hash": timed(
            lambda: tensorize.deserialize("s3://bench/model.tensors", key, s3.stream_kwargs())
        ),
    }
    return throughput("load (S3)", model, size, runs, BOTO3_GET)
