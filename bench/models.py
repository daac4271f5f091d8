"""Benchmark models: the tests' tiny Llama, and a ~1B-parameter random-weight Llama.

The large one is made on the spot (random fp16 weights, written shard by shard so at
most one shard is in memory) and committed to a git mirror, so a full publish run can
fetch it like any catalog entry. Random weights serialize and encrypt exactly like
trained ones; only the generated text is nonsense.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dagster_project.demo import _tokenizer, git, write_tiny_model

SHARD_BYTES = 1 << 30


@dataclass(frozen=True)
class ModelSpec:
    name: str  # repo id in the bench's git mirror
    layers: int  # 0: the tests' tiny model

    @property
    def label(self) -> str:
        return self.name.split("/")[-1]


TINY = ModelSpec("bench/tiny-llama", 0)
LARGE = ModelSpec("bench/llama-1b", 20)  # hidden 2048, 20 layers: 1.01e9 params, 2.0 GB fp16


def large_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float16",
    )


def write_large_model(dest: Path, layers: int, seed: int = 0) -> None:
    """Config, tokenizer and sharded fp16 safetensors of a random Llama."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = large_config(layers)
    with torch.device("meta"):
        shapes = {
            n: t.shape for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()
        }
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=torch.float16)
        else:
            tensor = (torch.randn(shape, generator=gen) * 0.02).to(torch.float16)
        if size + tensor.nbytes > SHARD_BYTES and shards[-1]:
            _save_shard(shards, dest, save_file)
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    _save_shard(shards, dest, save_file)
    config.save_pretrained(dest)
    _tokenizer(dest, 384)


def _save_shard(shards: list[dict], dest: Path, save_file) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    save_file(shards[-1], dest / f"model-{len(shards):05d}.safetensors", metadata={"format": "pt"})
    shards[-1] = {}
    shards.append({})


def make_mirror_repo(root: Path, spec: ModelSpec) -> Path:
    """The model committed at `root/<name>` (git stores the weights uncompressed: fast)."""
    repo = root / spec.name
    if spec.layers:
        write_large_model(repo, spec.layers)
    else:
        write_tiny_model(repo, arch="llama", seed=0)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "core.compression=0", "add", "-A")
    git(repo, "commit", "-q", "-m", f"{spec.label} random weights")
    return repo


def weights_bytes(snapshot: Path) -> int:
    return sum(p.stat().st_size for p in snapshot.glob("*.safetensors"))
