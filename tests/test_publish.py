"""The publish job end to end, with real Dagster runs, real git mirrors and real vLLM."""

import base64
import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from dagster import AssetSelection, DagsterInstance, materialize

from assets import checks
from assets.publish_jobs import MODEL_JOB
from dagster_project.cli import PublishFailed, main, publish
from dagster_project.definitions import build_definitions
from dagster_project.demo import commit_tiny_model
from resources.registry.records import StagedArtifact
from resources.registry.registry import Registry
from resources.storage.store import LocalStore
from resources.vllm.engine_host import HOST_ENV
from tests.conftest import LLAMA, OPT, catalog_yaml

pytestmark = pytest.mark.vllm

KEY = LLAMA.replace("/", "__")


def registry(env) -> Registry:
    return Registry(LocalStore(env.settings.store))


def assert_no_key_material(key: bytes, roots: list[Path], captured) -> None:
    """The key, in any common encoding, appears in no file under `roots` (the store, the
    Dagster event log and compute logs) and in nothing printed."""
    forms = [key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)]
    text = (captured.out + captured.err).encode()
    for path in [p for root in roots for p in root.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert not any(form in data for form in forms), f"key material in {path}"
    assert not any(form in text for form in forms), "key material in the output"


def test_publish_verify_and_republish(env, capsys):
    record = publish(env.settings, LLAMA)
    assert record.suffix == "v1" and record.encrypted
    assert record.validation["passed"]
    assert record.validation["generations"]["max_abs_logprob_diff"] <= 0.01
    sha = subprocess.run(
        ["git", "-C", env.mirror / LLAMA, "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert record.hf_sha == sha
    artifact = Path(record.artifact_uri)
    assert {"model.tensors", "config.json", "tokenizer.json"} <= {
        p.name for p in artifact.iterdir()
    }
    key = (Path(env.settings.keys) / f"{KEY}/v1.key").read_bytes()
    assert_no_key_material(
        key, [Path(env.settings.store), env.root / "dagster_home"], capsys.readouterr()
    )
    report = json.loads(Path(record.validation_report).read_text())
    assert all(row["tokens_equal"] for row in report["generations"])
    v1_bytes = (Path(env.settings.store) / f"registry/{LLAMA}/versions/v1.json").read_bytes()

    # The same sha again: re-verified and reused, never a second suffix.
    again = publish(env.settings, LLAMA)
    assert again.suffix == "v1"
    assert [r.suffix for r in registry(env).versions(LLAMA)] == ["v1"]
    reports = sorted((Path(env.settings.store) / f"validation/{LLAMA}/v1").glob("*.json"))
    assert len(reports) == 2  # the second run checked v1 again, and passed
    assert all(json.loads(p.read_text())["passed"] for p in reports)

    # A new commit on the tracked branch: v2, and `latest` moves to it.
    new_sha = commit_tiny_model(env.mirror / LLAMA, seed=1)
    v2 = publish(env.settings, LLAMA)
    assert (v2.suffix, v2.hf_sha) == ("v2", new_sha)
    assert registry(env).resolve(LLAMA).suffix == "v2"
    assert (
        Path(env.settings.store) / f"registry/{LLAMA}/versions/v1.json"
    ).read_bytes() == v1_bytes

    assert main(["serve-command", f"{LLAMA}@v1"]) == 0
    command = capsys.readouterr().out
    assert "--load-format tensorizer" in command and f"{KEY}/v1.key" in command
    assert main(["resolve", LLAMA]) == 0
    assert json.loads(capsys.readouterr().out)["suffix"] == "v2"
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert f"{LLAMA}@v1" in listing and f"{LLAMA}@v2" in listing and "latest" in listing


def test_publish_a_second_architecture_unencrypted(env, monkeypatch):
    monkeypatch.delenv(HOST_ENV)  # the engines start as a user's do, without an engine host
    env.write_catalog(
        Path(env.settings.catalog)
        .read_text()
        .replace("repo_id: test-org/tiny-opt", "repo_id: test-org/tiny-opt\n  encrypt: false")
    )
    record = publish(env.settings, OPT)
    assert record.suffix == "v1" and not record.encrypted and record.key_id is None
    assert record.validation["tensors"]["count"] > 0


def tamper_before_checks(monkeypatch, tamper: Callable[[StagedArtifact], None]) -> None:
    """Change what the run uploaded after the upload, just before its checks read it."""
    original = checks.check_target

    def tampered(op, repo_id, registry_resource):
        target = original(op, repo_id, registry_resource)
        tamper(target)
        return target

    monkeypatch.setattr(checks, "check_target", tampered)


def publish_run(env):
    """The whole publish job for KEY in one run, as materialize() runs it."""
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("models", [KEY])
    defs = build_definitions(env.settings)
    return materialize(
        [*defs.assets, *defs.asset_checks],
        selection=AssetSelection.assets(*MODEL_JOB.steps),
        instance=instance,
        partition_key=KEY,
        resources=defs.resources,
        raise_on_error=False,
    )


def failed_checks(result) -> dict[str, str]:
    return {
        e.check_name: e.description for e in result.get_asset_check_evaluations() if not e.passed
    }


def test_flipped_byte_fails_the_checks_and_publishes_nothing(env, monkeypatch):
    def flip(target: StagedArtifact) -> None:
        tensors = Path(env.settings.store) / target.prefix / target.tensors_file
        data = bytearray(tensors.read_bytes())
        data[len(data) // 2] ^= 0x01
        tensors.write_bytes(bytes(data))

    tamper_before_checks(monkeypatch, flip)
    result = publish_run(env)
    assert not result.success
    failed = failed_checks(result)
    assert set(failed) == {"tensors_match", "vllm_outputs_match", "great_expectations"}
    assert "was modified after publishing: part 0 " in failed["tensors_match"]
    assert not result.asset_materializations_for_node("published_version")
    assert registry(env).versions(LLAMA) == []


def test_wrong_key_fails_with_a_clear_error_and_publishes_nothing(env, monkeypatch):
    from tensorizer import EncryptionParams

    def swap_key(target: StagedArtifact) -> None:
        key_file = Path(env.settings.keys) / f"{target.key_id}.key"
        key_file.write_bytes(EncryptionParams.random().key)

    tamper_before_checks(monkeypatch, swap_key)
    result = publish_run(env)
    assert not result.success
    assert failed_checks(result)["tensors_match"].startswith(f"key '{KEY}/v1' does not decrypt")
    assert registry(env).versions(LLAMA) == []


def test_outputs_that_differ_fail_only_the_vllm_check_and_publish_nothing(env, monkeypatch):
    """A published config.json edited after upload, its sha256 recomputed: every tensor
    and every file digest still matches, so only vLLM's outputs can tell."""

    def edit_config(target: StagedArtifact) -> None:
        path = Path(env.settings.store) / target.prefix / "config.json"
        config = json.loads(path.read_text())
        config["rms_norm_eps"] = 0.5
        path.write_text(json.dumps(config))
        data = path.read_bytes()  # the digest entry rewritten to match, size included
        target.files["config.json"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())

    tamper_before_checks(monkeypatch, edit_config)
    with pytest.raises(PublishFailed) as failed:
        publish(env.settings, LLAMA)
    lines = str(failed.value).splitlines()
    vllm_line = [line for line in lines if "check failed: vllm_outputs_match" in line]
    assert len(vllm_line) == 1 and "differ" in vllm_line[0], lines
    assert not any("tensors_match" in line for line in lines), lines
    assert not any("see the check metadata" in line for line in lines), lines
    assert registry(env).versions(LLAMA) == []


def test_a_model_with_a_short_context_publishes_and_prompts_beyond_it_are_refused(env):
    short = "test-org/short-llama"
    commit_tiny_model(env.mirror / short, context=96)
    too_long = {"repo_id": "test-org/short-llama-b", "max_tokens": 95}
    commit_tiny_model(env.mirror / too_long["repo_id"], context=96)
    env.write_catalog(catalog_yaml(env.mirror, [{"repo_id": short}, too_long]))

    record = publish(env.settings, short)  # max_model_len 96: at most the model's own
    assert record.validation["generations"]["passed"]

    with pytest.raises(PublishFailed, match="beyond the model's context of 96 tokens"):
        publish(env.settings, too_long["repo_id"])
    registry_ = registry(env)
    assert registry_.versions(too_long["repo_id"]) == []
    assert registry_.reservation(too_long["repo_id"], "v1") is None  # refused before upload


def test_a_key_gone_before_the_checks_fails_clearly_and_publishes_nothing(env, monkeypatch):
    def lose_key(target: StagedArtifact) -> None:
        (Path(env.settings.keys) / f"{target.key_id}.key").unlink()

    tamper_before_checks(monkeypatch, lose_key)
    with pytest.raises(PublishFailed) as failed:
        publish(env.settings, LLAMA)
    message = str(failed.value)
    assert f"roundtrip_checks: key '{KEY}/v1' is not in the key store" in message, message
    assert "Traceback" not in message
    assert registry(env).versions(LLAMA) == []


def test_missing_revision_fails_before_anything_is_written(env):
    env.write_catalog(
        Path(env.settings.catalog)
        .read_text()
        .replace(
            "repo_id: test-org/tiny-llama", "repo_id: test-org/tiny-llama\n  ref: no-such-branch"
        )
    )
    with pytest.raises(PublishFailed, match="revision 'no-such-branch' not found"):
        publish(env.settings, LLAMA)
    # no record, no reservation, no file, no key
    for root in (env.settings.store, env.settings.keys):
        assert not Path(root).exists() or not [p for p in Path(root).rglob("*") if p.is_file()]
