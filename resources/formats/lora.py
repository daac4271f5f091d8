"""PEFT LoRA adapters: do they fit their base model, and how serving code gets them back.

An adapter is published under its base model's version,
`vllm/<base repo>/<base suffix>/adapters/<adapter repo>/<adapter suffix>/`, as
`adapter_model.tensors` (tensorizer, encrypted) plus `adapter_config.json`. vLLM 0.32+
no longer reads tensorizer adapters itself, so `restore_adapter` decrypts and
deserializes one into the directory layout PEFT writes and vLLM's `LoRARequest` reads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from resources.errors import ModelpubError
from resources.formats import tensorize
from resources.layout import ADAPTER_TENSORS_FILE
from resources.storage import digests
from resources.storage.digests import FileDigests
from resources.storage.store import ObjectStore

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# adapter tensor kind -> (dimension of the adapter tensor, dimension of the base weight)
# that must agree: lora_A is (r, in), lora_B is (out, r) against a (out, in) weight;
# embedding adapters are (r, vocab) and (dim, r) against a (vocab, dim) embedding.
LORA_DIMS = {
    "lora_A": (1, 1),
    "lora_B": (0, 0),
    "lora_embedding_A": (1, 0),
    "lora_embedding_B": (0, 1),
}


class AdapterError(ModelpubError):
    """An adapter that cannot be published or restored; the message says why and what to do."""


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    dtype: str
    target_modules: list[str]
    tensors: int


def _read_config(adapter_dir: Path) -> dict:
    try:
        return json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; is this a PEFT adapter repo?"
        ) from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{adapter_dir / ADAPTER_CONFIG} is not valid JSON: {exc}") from None


def _shapes(directory: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from safetensors headers, without loading the tensors."""
    from safetensors import safe_open

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                piece = f.get_slice(name)
                out[name] = (list(piece.get_shape()), piece.get_dtype())
    return out


def _base_weight(name: str) -> tuple[str, str] | None:
    """`base_model.model.<module>.lora_A.weight` -> (`<module>.weight`, `lora_A`)."""
    stem = name.removeprefix(PEFT_PREFIX)
    for kind in LORA_DIMS:
        for tail in (f".{kind}.weight", f".{kind}"):
            if stem.endswith(tail):
                return f"{stem.removesuffix(tail)}.weight", kind
    return None


def check_compatible(adapter_dir: Path, base_repo_id: str, base_dir: Path) -> AdapterInfo:
    """Refuse an adapter that was not made for this base, before anything is uploaded.

    Its config must name the base repo and every LoRA tensor must fit the base weight it
    modifies; otherwise vLLM would fail at the first request, or worse, run a mismatch.
    """
    config = _read_config(adapter_dir)
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"{adapter_dir}: peft_type is {config.get('peft_type')!r}; vLLM serves LoRA only"
        )
    named = config.get("base_model_name_or_path")
    if named != base_repo_id:
        raise AdapterError(
            f"the adapter's base_model_name_or_path is {named!r} but the catalog lists it "
            f"under {base_repo_id!r}: move it under the model it was trained on, or fix "
            f"{ADAPTER_CONFIG} in the adapter repo"
        )
    adapter, base = _shapes(adapter_dir), _shapes(base_dir)
    if not adapter:
        raise AdapterError(
            f"{adapter_dir} has no *.safetensors weights; publish a revision with {ADAPTER_WEIGHTS}"
        )
    problems, ranks = [], set()
    for name, (shape, _) in sorted(adapter.items()):
        found = _base_weight(name)
        if found is None:
            problems.append(f"{name}: not a LoRA tensor (only lora_A/B, lora_embedding_A/B)")
            continue
        weight, kind = found
        if weight not in base:
            problems.append(f"{name}: the base has no weight {weight!r}")
            continue
        ours, theirs = LORA_DIMS[kind]
        base_shape = base[weight][0]
        if len(shape) != 2 or len(base_shape) != 2 or shape[ours] != base_shape[theirs]:
            problems.append(f"{name}: shape {shape} does not fit {weight} {base_shape}")
            continue
        ranks.add(shape[1 - ours])
    if problems:
        shown = "; ".join(problems[:5]) + (f"; …{len(problems) - 5} more" if problems[5:] else "")
        raise AdapterError(
            f"the adapter does not fit {base_repo_id} ({len(problems)} problems): {shown}"
        )
    dtypes = sorted({SAFETENSORS_DTYPES.get(dtype, dtype) for _, dtype in adapter.values()})
    return AdapterInfo(
        rank=max(ranks),
        dtype="/".join(dtypes),
        target_modules=sorted(config.get("target_modules") or []),
        tensors=len(adapter),
    )


def restore_adapter(
    store: ObjectStore,
    prefix: str,
    files: FileDigests,
    key_id: str | None,
    key: bytes | None,
    dest: Path,
) -> Path:
    """Write a published adapter to `dest` as PEFT lays it out, for vLLM's `LoRARequest`.

    Every file is checked against its recorded sha256 and the tensors are decrypted with
    hash verification. `dest` must not exist or be empty; it appears whole or not at all.
    """
    from safetensors.torch import save_file

    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AdapterError(f"{dest} exists and is not an empty directory; choose another")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        staged = Path(tmp) / "adapter"
        staged.mkdir()
        for name, expected in sorted(files.items()):
            with store.local_copy(f"{prefix}/{name}") as path:
                if not digests.file_matches(path, expected):
                    raise AdapterError(
                        f"{store.uri(f'{prefix}/{name}')} does not match the sha256 its "
                        "registry record holds: it was modified after publishing"
                    )
                if name != ADAPTER_TENSORS_FILE:
                    (staged / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, staged / name)
                    continue
                try:
                    tensors = tensorize.deserialize(str(path), key)
                except Exception as exc:  # noqa: BLE001 - reported with what it means
                    uri = store.uri(f"{prefix}/{name}")
                    raise AdapterError(tensorize.describe_load_error(exc, uri, key_id)) from None
                save_file(tensors, staged / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        for path in staged.rglob("*"):  # decrypted weights: this user's only
            path.chmod(0o600 if path.is_file() else 0o700)
        staged.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            dest.rmdir()
        staged.rename(dest)
    return dest
