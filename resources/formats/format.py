"""The published formats behind one small interface, the way vLLM maps load formats to
loader classes: which files hold the tensors, how they are written, how the round trip
checks them and how vLLM loads them. Records name their format (`hf`, `vllm`,
`peft-lora`); code asks `artifact_format(name)` instead of comparing strings.

Writers import torch and vLLM only when they run, so read-only commands stay fast.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from resources.errors import ModelpubError
from resources.layout import tensors_name

if TYPE_CHECKING:
    from resources.formats.streaming import StreamedFile
    from resources.formats.tensorize import SerializeStats
    from resources.storage.digests import Entry

# Told (stage, done, total) as a long write goes on: "serialize" in tensors, "upload" in files.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """Where nobody watches."""


class FormatError(ModelpubError):
    """A catalog entry asks for a format this host cannot write; says what to change."""


class StagingFull(ModelpubError):
    """The local staging disk filled up; retrying will not help until space is freed."""


@dataclass
class WrittenTensors:
    """The tensors files a format wrote into staging, with the digests taken as it wrote."""

    paths: list[Path]
    seconds: float
    # file name -> its record entry (resources/storage/digests.py), where known
    entries: dict[str, Entry] = field(default_factory=dict)


def _staging_full(exc: OSError, staging: Path, doing: str) -> Exception:
    """A full staging disk said as what to do; other OS errors as they are."""
    if exc.errno != errno.ENOSPC:
        return exc
    return StagingFull(
        f"no space left in the staging directory {staging} {doing}; free space there or "
        "point MODELPUB_CACHE at a larger disk, then rerun"
    )


class ArtifactFormat:
    """One published format. The default is the HF-tensorized one: the checkpoint's own
    tensors, by their names, in one tensorizer file."""

    name: ClassVar[str] = "hf"
    # Its tensors carry the checkpoint's names, so the round trip compares them one by one.
    compares_with_source: ClassVar[bool] = True
    # vLLM's `--load-format` for it; None where vLLM loads it otherwise (a LoRA module).
    load_format: ClassVar[str | None] = "tensorizer"
    # Written by modelpub's serializer, so it can stream into an upload (`stream_tensors`).
    streams: ClassVar[bool] = True
    # One tensors file per tensor-parallel rank: what a tensor-parallel model needs.
    per_rank: ClassVar[bool] = False

    def tensors_files(self, tensors_file: str, tensor_parallel_size: int) -> list[str]:
        """The files behind a `tensorizer_uri` name."""
        return [tensors_file]

    def write_tensors(
        self,
        snapshot: Path,
        staging: Path,
        dtype: str | None,
        key: bytes | None,
        tensors_file: str,
        tensor_parallel_size: int,
        progress: Progress = no_progress,
    ) -> WrittenTensors:
        """Serialize the snapshot's weights (cast to `dtype`, None keeps theirs) into
        `staging/tensors_file`, streamed in batches."""
        path = staging / tensors_file
        try:
            stats = self._serialize(snapshot, path, dtype, key, progress)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise _staging_full(exc, staging, "while serializing") from None
        return WrittenTensors([path], stats.seconds, {tensors_file: stats.entry})

    def stream_tensors(
        self,
        snapshot: Path,
        dest: StreamedFile,
        dtype: str | None,
        key: bytes | None,
        progress: Progress = no_progress,
    ) -> float:
        """Serialize the snapshot's weights into `dest`, whose parts upload as they are
        written; returns the seconds it took, uploads included."""
        try:
            return self._serialize(snapshot, dest, dtype, key, progress).seconds
        except OSError as exc:
            raise _staging_full(exc, dest.staging, "while spooling the upload's parts") from None

    @staticmethod
    def _serialize(
        snapshot: Path,
        dest: Path | StreamedFile,
        dtype: str | None,
        key: bytes | None,
        progress: Progress,
    ) -> SerializeStats:
        from resources.formats import streaming, tensorize

        # a few hundred MB in memory at a time, not the model; streaming, less: the spool
        # holds one batch until tensorizer's end marker seals it
        checkpoint = tensorize.SourceCheckpoint(snapshot, dtype)
        batch = tensorize.BATCH_BYTES if isinstance(dest, Path) else streaming.BATCH_BYTES
        total, done = len(checkpoint.names()), 0

        def written(count: int) -> None:
            nonlocal done
            done += count
            progress("serialize", done, total)

        progress("serialize", 0, total)
        batches = checkpoint.batches(batch, recycle=True)  # serialize consumes them
        # the parts of a local file are those the store would stream it in
        parts = tensorize.part_size(snapshot)
        return tensorize.serialize(batches, dest, key, True, written, parts)

    def serve_note(self, tensor_parallel_size: int) -> str | None:
        """A comment for the printed serve command, where serving it needs saying."""
        return None


class VllmTensorized(ArtifactFormat):
    """vLLM's own model (its parameter names, fused projections) serialized by vLLM, one
    file per tensor-parallel rank: loads straight onto the GPU, on CUDA hosts only."""

    name = "vllm"
    compares_with_source = False
    streams = False  # vLLM's serializer writes local files
    per_rank = True

    def tensors_files(self, tensors_file: str, tensor_parallel_size: int) -> list[str]:
        if tensor_parallel_size == 1:
            return [tensors_file]
        return [tensors_file % rank for rank in range(tensor_parallel_size)]

    def write_tensors(
        self,
        snapshot: Path,
        staging: Path,
        dtype: str | None,
        key: bytes | None,
        tensors_file: str,
        tensor_parallel_size: int,
        progress: Progress = no_progress,
    ) -> WrittenTensors:
        from resources.vllm.tensorized import write_vllm_tensors

        names = self.tensors_files(tensors_name(tensor_parallel_size), tensor_parallel_size)
        start = time.perf_counter()
        paths = write_vllm_tensors(snapshot, staging, dtype, key, tensor_parallel_size, names)
        return WrittenTensors(paths, time.perf_counter() - start)  # includes vLLM's load

    def serve_note(self, tensor_parallel_size: int) -> str | None:
        gpus = f" with {tensor_parallel_size} GPUs" if tensor_parallel_size > 1 else ""
        return f"# vLLM-tensorized: loads on a CUDA host{gpus}, straight onto the GPU"


class PeftLora(ArtifactFormat):
    """A PEFT LoRA adapter's tensors in one tensorizer file, in their own dtype; vLLM loads
    it as a LoRA module from the PEFT directory `modelpub fetch-adapter` restores."""

    name = "peft-lora"
    load_format = None


FORMATS: dict[str, ArtifactFormat] = {
    f.name: f for f in (ArtifactFormat(), VllmTensorized(), PeftLora())
}


def artifact_format(name: str) -> ArtifactFormat:
    try:
        return FORMATS[name]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise FormatError(f"unknown artifact format {name!r} (known: {known})") from None


def choose_format(requested: str, cuda: bool, tensor_parallel_size: int = 1) -> str:
    """`auto` | `hf` | `vllm` from the catalog -> the format written here: `hf` or `vllm`."""
    if requested == ArtifactFormat.name:
        return ArtifactFormat.name
    if cuda:
        return VllmTensorized.name
    if requested == VllmTensorized.name:
        raise FormatError(
            "format 'vllm' (the vLLM-tensorized format) needs a CUDA host: vLLM serializes "
            "it from a model loaded on the GPU and only loads it there. Publish from a GPU "
            "node, or set format: auto (the HF-tensorized format on this host)"
        )
    if tensor_parallel_size > 1:
        raise FormatError(
            f"tensor_parallel_size {tensor_parallel_size} needs the vLLM-tensorized format "
            "(one file per rank), which needs a CUDA host: publish from a GPU node with "
            f"{tensor_parallel_size} GPUs, or set tensor_parallel_size: 1"
        )
    return ArtifactFormat.name
