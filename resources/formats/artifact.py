"""A published artifact: the tensors (`model.tensors`, or one `model-rank-NNN.tensors` per
tensor-parallel rank in the vLLM-tensorized format) plus config/tokenizer files under one prefix.

Writing stages every file locally, hashes it and uploads it; reading back checks
the file hashes and every tensor against the source checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass, field
from pathlib import Path

from resources import tensorize
from resources.errors import ModelpubError
from resources.layout import TENSORS_FILE
from resources.storage.store import NotFound, ObjectStore, StoreError
from resources.vllm import tensorized as vllm_format


class StagingFull(ModelpubError):
    """The local staging disk filled up; retrying will not help until space is freed."""


@dataclass
class WrittenArtifact:
    files: dict[str, dict] = field(default_factory=dict)  # name -> {size, sha256}
    serialize_s: float = 0.0
    upload_s: float = 0.0
    tensors_files: list[str] = field(default_factory=lambda: [TENSORS_FILE])

    @property
    def tensors_bytes(self) -> int:
        return sum(self.files[name]["size"] for name in self.tensors_files)

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())


def _serialize(
    snapshot: Path, dtype: str | None, key: bytes | None, tensors: Path
) -> tensorize.SerializeStats:
    """HF-format weights to the file `tensors`, streamed in batches and given up to the
    serializer (a few hundred MB in memory at a time, not the model)."""
    try:
        weights = tensorize.iter_source_weights(snapshot, dtype)
        return tensorize.serialize(weights, tensors, key, consume=True)
    except OSError as exc:
        tensors.unlink(missing_ok=True)
        if exc.errno != errno.ENOSPC:
            raise
        need = sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))
        raise StagingFull(
            f"no space left in the staging directory {tensors.parent} while serializing "
            f"{need / 1e6:.1f} MB of tensors; free space there or point MODELPUB_CACHE at a "
            "larger disk, then rerun"
        ) from None


def write_artifact(
    store: ObjectStore,
    prefix: str,
    snapshot: Path,
    dtype: str | None,
    key: bytes | None,
    staging: Path,
    tensors_file: str = TENSORS_FILE,
    fmt: str = "hf",
    tensor_parallel_size: int = 1,
) -> WrittenArtifact:
    """Serialize the snapshot's weights to `tensors_file` and upload them with its other files.

    `dtype` None keeps the weights' own dtypes. `fmt` `vllm` has vLLM serialize its model
    instead (resources/vllm/tensorized.py), one file per rank, `tensors_file` then being the
    per-rank template. Staged tensors files are moved, not copied, into a store that can
    (a local store on the same filesystem). On failure, whatever was uploaded under
    `prefix` is removed again (best effort; nothing there is visible to serving code
    until a registry record points at it).
    """
    hashes: dict[str, str] = {}  # staged file name -> sha256 taken as it was written
    if fmt == "vllm":
        start = time.perf_counter()
        tensors = vllm_format.write_vllm_tensors(
            snapshot, staging, dtype, key, tensor_parallel_size
        )
        serialize_s = time.perf_counter() - start  # includes vLLM loading the model
    else:
        stats = _serialize(snapshot, dtype, key, staging / tensors_file)
        tensors, serialize_s = [staging / tensors_file], stats.seconds
        hashes[tensors_file] = stats.sha256
    out = WrittenArtifact(serialize_s=serialize_s, tensors_files=[p.name for p in tensors])
    uploads = [(p.name, p) for p in tensors] + [
        (str(p.relative_to(snapshot)), p) for p in tensorize.config_files(snapshot)
    ]
    start = time.perf_counter()
    try:
        for name, path in uploads:
            staged = path in tensors
            digest = hashes.get(name) if staged else None
            out.files[name] = {
                "size": path.stat().st_size,
                "sha256": digest or tensorize.sha256_file(path),
            }
            (store.put_staged if staged else store.put_file)(f"{prefix}/{name}", path)
    except BaseException:
        for name in out.files:
            with contextlib.suppress(Exception):  # the original error matters more
                store.delete(f"{prefix}/{name}")
        raise
    finally:
        for path in tensors:
            path.unlink(missing_ok=True)
    out.upload_s = time.perf_counter() - start
    return out


def check_files(store: ObjectStore, prefix: str, files: dict[str, dict]) -> list[dict]:
    """One row per recorded file: present, same size and same sha256 as recorded."""
    rows = []
    for name, expected in sorted(files.items()):
        row = {"file": name, "size": expected["size"], "present": True, "sha256_matches": False}
        try:
            with store.local_copy(f"{prefix}/{name}") as path:
                row["sha256_matches"] = tensorize.sha256_file(path) == expected["sha256"]
        except NotFound:
            row["present"] = False
        rows.append(row)
    return rows


def fetch_config(store: ObjectStore, prefix: str, files: dict[str, dict], dest: Path) -> list[Path]:
    """Download an artifact's files except the tensors into `dest`: the local `model`
    directory vLLM needs while the tensors stream from the store. Each file must match
    the sha256 in the version record."""
    written = []
    for name, expected in sorted(files.items()):
        if name.endswith(".tensors"):  # model.tensors, or one file per rank
            continue
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        store.get_file(f"{prefix}/{name}", path)
        if tensorize.sha256_file(path) != expected["sha256"]:
            path.unlink()
            raise StoreError(
                f"{store.uri(f'{prefix}/{name}')} does not match the sha256 in its version "
                "record: it was changed after publishing; do not serve this version"
            )
        written.append(path)
    return written
