"""Serialize Hugging Face weights with tensorizer, and read them back to prove it.

The HF-tensorized format (one `model.tensors` holding the checkpoint's state dict
under HF names) loads on every vLLM platform with `load_format="tensorizer"`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TENSORS_FILE = "model.tensors"
ADAPTER_TENSORS_FILE = "adapter_model.tensors"  # the name vLLM's own LoRA tensorizing used


class TensorizeError(RuntimeError):
    pass


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name.endswith(".safetensors.index.json")


def config_files(snapshot: Path) -> list[Path]:
    """Everything vLLM needs beside the weights: config, tokenizer, generation config."""
    return sorted(
        p
        for p in snapshot.rglob("*")
        if p.is_file()
        and not is_weight_file(p.name)
        and not any(part.startswith(".") for part in p.relative_to(snapshot).parts)
    )


def load_source_weights(snapshot: Path, dtype: str | None) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, floating point ones cast to `dtype` (None keeps theirs)."""
    from safetensors.torch import load_file

    files = sorted(snapshot.glob("*.safetensors"))
    if not files:
        raise TensorizeError(
            f"{snapshot} has no *.safetensors weights; publish a revision with safetensors"
        )
    target = DTYPES[dtype] if dtype else None
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(file).items():
            weights[name] = tensor.to(target) if target and tensor.is_floating_point() else tensor
    return weights


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SerializeStats:
    bytes_written: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def serialize(weights: dict[str, torch.Tensor], dest: Path, key: bytes | None) -> SerializeStats:
    """Write `weights` to the local file `dest`, encrypted with `key` when given."""
    from tensorizer import EncryptionParams, TensorSerializer

    encryption = EncryptionParams(key) if key is not None else None
    start = time.perf_counter()
    serializer = TensorSerializer(str(dest), encryption=encryption)
    try:
        serializer.write_state_dict(weights)
    finally:
        serializer.close()
    return SerializeStats(dest.stat().st_size, time.perf_counter() - start)


def deserialize(
    source: str, key: bytes | None, stream_kwargs: dict | None = None
) -> dict[str, torch.Tensor]:
    """Read every tensor back with hash verification; raises on tampering or a wrong key."""
    from tensorizer import DecryptionParams, TensorDeserializer
    from tensorizer.stream_io import open_stream

    decryption = DecryptionParams.from_key(key) if key is not None else None
    with (
        open_stream(source, "rb", **(stream_kwargs or {})) as stream,
        TensorDeserializer(
            stream, device="cpu", verify_hash=True, encryption=decryption
        ) as tensors,
    ):
        return {name: tensor.clone() for name, tensor in tensors.items()}


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Compare bit patterns, so NaNs and -0.0 count as equal only when identical."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def describe_weights(tensors: dict[str, torch.Tensor], prefix: str = "") -> list[dict]:
    """One row per tensor that has no source counterpart (the vLLM-tensorized format): it was
    read back with its hash verified, which is all `equal` can claim for it."""
    return [
        {
            "name": f"{prefix}{name}",
            "source_dtype": None,
            "published_dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "numel": t.numel(),
            "equal": True,
        }
        for name, t in sorted(tensors.items())
    ]


def compare_weights(
    source: dict[str, torch.Tensor], published: dict[str, torch.Tensor]
) -> list[dict]:
    """One row per tensor name in either side: does the published tensor equal the source?"""
    rows = []
    for name in sorted(set(source) | set(published)):
        a, b = source.get(name), published.get(name)
        row = {
            "name": name,
            "source_dtype": str(a.dtype).removeprefix("torch.") if a is not None else None,
            "published_dtype": str(b.dtype).removeprefix("torch.") if b is not None else None,
            "shape": list(a.shape if a is not None else b.shape),
            "numel": (a if a is not None else b).numel(),
        }
        row["equal"] = bool(
            a is not None
            and b is not None
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(_raw_bytes(a), _raw_bytes(b))
        )
        rows.append(row)
    return rows
