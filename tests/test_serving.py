"""Serving from a registry reference: `modelpub serve REF` and `vllm_kwargs(REF)`, verified
before anything loads, compared with what transformers generates from the source model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from dagster_project.cli import main
from dagster_project.demo import commit_tiny_adapter
from resources.layout import SIGNING_KEY
from resources.serving import LOAD_FORMAT, ServeError, prepare
from resources.signing import new_private_key
from resources.vllm.runner import ENGINE_ENV
from tests.conftest import LLAMA, Env
from tests.processes import free_port, start, stop, wait_for
from tests.published import publish_tiny, publish_tiny_adapter, stores

LORA = "test-org/tiny-llama-lora"
PROMPT = "Hello world"
MAX_TOKENS = 8


def _published(env: Env, with_adapter: bool = True):
    base = publish_tiny(env, LLAMA)
    if not with_adapter:
        return base, None
    commit_tiny_adapter(env.mirror / LORA, env.mirror / LLAMA, LLAMA)
    return base, publish_tiny_adapter(env, LORA, base)


def _transformers_greedy(env: Env, adapter: bool) -> str:
    """What the source model (fp16 weights, as published, run in fp32) generates greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = env.mirror / LLAMA
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float16).float()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, env.mirror / LORA)
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_a_plan_verifies_caches_config_and_attaches_the_adapters(s3_env: Env):
    base, adapter = _published(s3_env)
    plan = prepare(f"{LLAMA}@latest", s3_env.settings)
    assert plan.record.reference == base.reference
    assert (plan.model_dir / "config.json").read_bytes() == (
        s3_env.mirror / LLAMA / "config.json"
    ).read_bytes()
    assert not list(plan.model_dir.glob("*.tensors"))  # the tensors stream from the store
    assert [(a.name, a.reference, a.rank) for a in plan.adapters] == [(LORA, adapter.reference, 8)]
    assert (plan.adapters[0].path / "adapter_model.safetensors").is_file()

    argv = plan.server_argv(["--port", "1"])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--load-format") + 1] == LOAD_FORMAT
    assert json.loads(argv[argv.index("--model-loader-extra-config") + 1]) == {
        "reference": base.reference
    }
    assert f"{LORA}={plan.adapters[0].path}" in argv
    _, keys = stores(s3_env)
    secrets = [keys.get(base.key_id).hex(), os.environ["MODELPUB_S3_SECRET_ACCESS_KEY"]]
    assert not [s for s in secrets for a in argv if s in a]  # no secret on the command line

    # the cache is reused, and checked: a changed config file is refused
    (plan.model_dir / "config.json").write_text("{}")
    with pytest.raises(ServeError, match="is not the file .* published; remove"):
        prepare(base.reference, s3_env.settings)


def test_a_tampered_file_or_an_untrusted_signature_stops_serve_before_it_starts(env: Env, capsys):
    base, _ = _published(env, with_adapter=False)
    registry, keys = stores(env)
    prefix, tensors = base.location
    path = registry.store.path(f"{prefix}/{tensors}")
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    assert main(["serve", LLAMA]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"modelpub: {base.reference}: signature: does not match")
    assert err.endswith("not serving it") and len(err.splitlines()) == 1
    assert not (Path(env.settings.cache) / "serve").exists()  # nothing fetched

    path.write_bytes(original)
    keys.store.delete(SIGNING_KEY)  # a new signing key, that never signed this version
    keys.store.create(SIGNING_KEY, new_private_key())
    with pytest.raises(ServeError, match="which the key store does not trust"):
        prepare(LLAMA, env.settings)


def test_an_adapter_reference_names_its_base(env: Env):
    _, adapter = _published(env)
    with pytest.raises(ServeError, match=f"is an adapter; serve its base, {LLAMA}@v1"):
        prepare(adapter.reference, env.settings)


def _completion(port: int, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["text"]


def _models(port: int) -> list[str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            return [m["id"] for m in json.loads(r.read())["data"]]
    except OSError:
        return None


@pytest.mark.vllm
def test_serve_from_s3_answers_as_transformers_does_for_the_model_and_its_adapter(
    s3_env: Env, tmp_path, monkeypatch
):
    _published(s3_env)
    for name, value in ENGINE_ENV.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    server = start(
        ["modelpub", "serve", f"{LLAMA}@latest", "--", "--port", str(port)]
        + ["--max-model-len", "128", "--enforce-eager"],
        tmp_path / "serve.log",
    )
    try:
        models = wait_for(lambda: _models(port), 300, "the server's /v1/models", server)
        assert sorted(models) == sorted([LLAMA, LORA])
        base_text = _transformers_greedy(s3_env, adapter=False)
        lora_text = _transformers_greedy(s3_env, adapter=True)
        assert base_text and lora_text != base_text  # the adapter changes the answer
        assert _completion(port, LLAMA) == base_text
        assert _completion(port, LORA) == lora_text
    finally:
        stop(server)
    log = server.log.read_text()
    assert f"serving {LLAMA}@v1 (signature verified; adapters: {LORA}@v1)" in log


VLLM_KWARGS_SCRIPT = """
import json, sys
from vllm import LLM, SamplingParams
from resources.signing import new_private_key
from resources.serving import vllm_kwargs
llm = LLM(**vllm_kwargs(sys.argv[1]), max_model_len=128, enforce_eager=True)
out = llm.generate([sys.argv[2]], SamplingParams(temperature=0, max_tokens=int(sys.argv[3])))
print(json.dumps(out[0].outputs[0].text))
"""


@pytest.mark.vllm
def test_vllm_kwargs_loads_a_local_store_version_in_python(env: Env):
    _published(env, with_adapter=False)
    done = subprocess.run(
        [sys.executable, "-c", VLLM_KWARGS_SCRIPT, f"{LLAMA}@latest", PROMPT, str(MAX_TOKENS)],
        env={**os.environ, **ENGINE_ENV},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = json.loads(done.stdout.strip().splitlines()[-1])
    assert text == _transformers_greedy(env, adapter=False)
