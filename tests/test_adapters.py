"""LoRA adapters: catalog entries, the fit check, restore, and publishing through Dagster.

The vLLM tests share one published base (two engine starts) and add one engine start
each for the adapters that get as far as the vLLM check.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from dagster_project.cli import PublishFailed, main, publish, publish_adapter
from dagster_project.demo import commit_tiny_adapter
from resources.catalog import CatalogError, parse_catalog
from resources.formats import tensorize
from resources.formats.artifact import write_artifact
from resources.formats.lora import ADAPTER_WEIGHTS, AdapterError, check_compatible, restore_adapter
from resources.layout import ADAPTER_TENSORS_FILE
from resources.registry.registry import Registry
from resources.storage.keys import open_key_store
from resources.storage.store import LocalStore
from tests.conftest import LLAMA, OPT, Env, activate, catalog_yaml, home_settings

LORA = "test-org/tiny-llama-lora"  # fits the Llama and changes its outputs
ZERO = "test-org/zero-lora"  # lora_B left at zero, as PEFT initializes it: no effect
WRONG_NAME = "test-org/other-base-lora"  # names another base model
OPT_LORA = "test-org/opt-lora"  # made for the OPT model, listed under the Llama


@pytest.fixture(scope="session")
def adapter_template(tmp_path_factory, mirror_template) -> Path:
    """Git mirrors of the test adapters, built once per session."""
    root = tmp_path_factory.mktemp("adapters")
    llama, opt = mirror_template / LLAMA, mirror_template / OPT
    commit_tiny_adapter(root / LORA, llama, LLAMA)
    commit_tiny_adapter(root / ZERO, llama, LLAMA, std=0.0)
    commit_tiny_adapter(root / WRONG_NAME, llama, "someone-else/a-model")
    commit_tiny_adapter(root / OPT_LORA, opt, LLAMA)
    return root


def adapter_catalog(mirror: Path, adapters: list[str]) -> str:
    return catalog_yaml(
        mirror,
        [{"repo_id": LLAMA, "adapters": [{"repo_id": a} for a in adapters]}, {"repo_id": OPT}],
    )


# --- the catalog -------------------------------------------------------------------------

CATALOG = """
hubs:
  mirror: {kind: git_mirror, root: /m}
  other: {kind: git_mirror, root: /o}
models:
  - repo_id: org/base
    hub: mirror
    prompts: [one, two]
    max_tokens: 5
    adapters:
"""


def test_an_adapter_is_told_from_a_model_by_every_name_it_is_looked_up_by():
    catalog = parse_catalog(CATALOG + "      - {repo_id: org/lora}\n")
    for name in ("org/lora", "org__lora", "org__base--org__lora"):
        assert catalog.is_adapter(name) and catalog.adapter(name).adapter.repo_id == "org/lora"
    assert not catalog.is_adapter("org/base") and not catalog.is_adapter("org__base")


def test_adapter_entries_default_to_their_base():
    catalog = parse_catalog(
        CATALOG + "      - {repo_id: org/lora}\n"
        "      - {repo_id: org/lora2, hub: other, ref: v2, prompts: [three]}\n"
    )
    plain, custom = catalog.adapters
    assert (plain.key, plain.hub, plain.prompts, plain.max_tokens) == (
        "org__base--org__lora",
        "mirror",
        ["one", "two"],
        5,
    )
    assert (custom.hub, custom.adapter.ref, custom.prompts) == ("other", "v2", ["three"])
    assert catalog.adapter("org/lora2") == custom
    assert catalog.adapter("org__base--org__lora") == plain
    with pytest.raises(CatalogError, match="no catalog adapter 'org/none'"):
        catalog.adapter("org/none")


@pytest.mark.parametrize(
    "adapters, error",
    [
        (
            "      - {repo_id: org/lora, hub: nope}\n",
            r"models\[0\] \(org/base\)\.adapters\[0\] \(org/lora\)\.hub: unknown hub 'nope'",
        ),
        (
            "      - {repo_id: org/lora, dtype: float16}\n",
            r"adapters\[0\] \(org/lora\)\.dtype: Extra inputs are not permitted",
        ),
        (
            "      - {repo_id: org/lora}\n      - {repo_id: org/lora, ref: main}\n",
            r"adapters\[1\] \(org/lora\): listed twice",
        ),
        ("      - {repo_id: org/base}\n", r"is listed as a model too"),
        ("      - {repo_id: 'not a repo'}\n", r"adapters\[0\] \(not a repo\)\.repo_id"),
    ],
)
def test_bad_adapter_entries_are_named_precisely(adapters, error):
    with pytest.raises(CatalogError, match=error):
        parse_catalog(CATALOG + adapters)


# --- the fit check -----------------------------------------------------------------------


def test_a_fitting_adapter_is_described(adapter_template, mirror_template):
    info = check_compatible(adapter_template / LORA, LLAMA, mirror_template / LLAMA)
    assert (info.rank, info.dtype, info.tensors) == (8, "float32", 8)
    assert info.target_modules == ["q_proj", "v_proj"]


def test_an_adapter_for_another_base_is_refused(adapter_template, mirror_template):
    with pytest.raises(AdapterError, match="'someone-else/a-model' but the catalog lists it"):
        check_compatible(adapter_template / WRONG_NAME, LLAMA, mirror_template / LLAMA)
    with pytest.raises(AdapterError, match="the base has no weight 'model.decoder.layers"):
        check_compatible(adapter_template / OPT_LORA, LLAMA, mirror_template / LLAMA)


def test_an_adapter_of_the_wrong_shape_is_refused(adapter_template, mirror_template, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_template / LORA, adapter, ignore=shutil.ignore_patterns(".git"))
    tensors = load_file(adapter / ADAPTER_WEIGHTS)
    name = next(n for n in tensors if "q_proj.lora_A" in n)
    tensors[name] = tensors[name][:, :64].contiguous()  # trained on a narrower model
    save_file(tensors, adapter / ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError, match=r"shape \[8, 64\] does not fit .*q_proj.weight"):
        check_compatible(adapter, LLAMA, mirror_template / LLAMA)


# --- restore -----------------------------------------------------------------------------


def test_restore_decrypts_to_what_peft_wrote_and_refuses_tampering(adapter_template, tmp_path):
    store = LocalStore(tmp_path / "store")
    keys = open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))
    key = keys.create("adapter/v1")
    source = adapter_template / LORA
    staging = tmp_path / "staging"
    staging.mkdir()
    files = write_artifact(store, "a/v1", source, None, key, staging, ADAPTER_TENSORS_FILE).files
    assert set(files) == {ADAPTER_TENSORS_FILE, "adapter_config.json", "README.md"}

    dest = restore_adapter(store, "a/v1", files, "adapter/v1", key, tmp_path / "out" / "lora")
    original, restored = load_file(source / ADAPTER_WEIGHTS), load_file(dest / ADAPTER_WEIGHTS)
    assert tensorize.compare_weights(original, restored) and all(
        row["equal"] for row in tensorize.compare_weights(original, restored)
    )
    assert json.loads((dest / "adapter_config.json").read_text())["r"] == 8

    with pytest.raises(AdapterError, match="not an empty directory"):
        restore_adapter(store, "a/v1", files, "adapter/v1", key, dest)
    with pytest.raises(AdapterError, match="key 'other' does not decrypt"):
        restore_adapter(store, "a/v1", files, "other", b"\x01" * 32, tmp_path / "wrong-key")
    assert not (tmp_path / "wrong-key").exists()

    store.path("a/v1/adapter_config.json").write_text('{"r": 64}')
    with pytest.raises(AdapterError, match="does not match the sha256"):
        restore_adapter(store, "a/v1", files, "adapter/v1", key, tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()


# --- publishing through Dagster ----------------------------------------------------------


def _published_files(env: Env, adapter: str) -> list[str]:
    return [k for k in LocalStore(env.settings.store).list("vllm") if f"/adapters/{adapter}/" in k]


def test_an_adapter_waits_for_its_base(env: Env, adapter_template):
    shutil.copytree(adapter_template, env.mirror, dirs_exist_ok=True)
    env.write_catalog(adapter_catalog(env.mirror, [LORA]))
    with pytest.raises(PublishFailed, match=f"{LLAMA} has no published version yet"):
        publish_adapter(env.settings, LORA)
    assert LocalStore(env.settings.store).list("") == []


@pytest.fixture(scope="module")
def published_base(tmp_path_factory, mirror_template, adapter_template) -> Env:
    """A modelpub home with the Llama published (v1) and every test adapter in the catalog."""
    root = tmp_path_factory.mktemp("lora-home")
    mirror = root / "mirror"
    shutil.copytree(mirror_template, mirror)
    shutil.copytree(adapter_template, mirror, dirs_exist_ok=True)
    env = Env(root=root, mirror=mirror, settings=home_settings(root))
    env.write_catalog(adapter_catalog(mirror, [LORA, ZERO, WRONG_NAME, OPT_LORA]))
    with pytest.MonkeyPatch.context() as monkeypatch:
        activate(monkeypatch, env.settings)
        assert publish(env.settings, LLAMA).suffix == "v1"
        yield env


@pytest.mark.vllm
def test_publish_restore_an_adapter_and_print_its_serve_lines(
    published_base: Env, tmp_path, capsys
):
    env = published_base
    assert main(["publish", LORA, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kind"] == "adapter"
    assert (record["repo_id"], record["suffix"]) == (LORA, "v1")
    assert (record["base_repo_id"], record["base_suffix"], record["rank"]) == (LLAMA, "v1", 8)
    assert record["encrypted"] and record["key_id"]
    assert record["validation"]["passed"]

    # beside the base version it was checked with, encrypted
    store = LocalStore(env.settings.store)
    prefix = f"vllm/{LLAMA}/v1/adapters/{LORA}/v1"
    assert sorted(_published_files(env, LORA)) == [
        f"{prefix}/{name}"
        for name in sorted(["README.md", "adapter_config.json", ADAPTER_TENSORS_FILE])
    ]
    from tensorizer.serialization import CryptographyError

    with pytest.raises(CryptographyError, match="Tensor is encrypted"):  # no key, no tensors
        tensorize.deserialize(store.uri(f"{prefix}/{ADAPTER_TENSORS_FILE}"), None)
    assert Registry(store).resolve(f"{LORA}@latest").suffix == "v1"

    # vLLM: restored == original on every prompt, and != the base on at least one
    report = json.loads(Path(record["validation_report"]).read_text())
    rows = report["generations"]
    assert rows and all(r["tokens_equal"] and r["max_abs_logprob_diff"] == 0.0 for r in rows)
    assert any(r["differs_from_base"] for r in rows)
    assert any(r["published_text"] != r["base_text"] for r in rows)

    # what a user runs: fetch the adapter, then the printed vllm command
    out = tmp_path / "restored"
    assert main(["fetch-adapter", f"{LORA}@latest", str(out)]) == 0
    original = load_file(env.mirror / LORA / ADAPTER_WEIGHTS)
    assert all(
        r["equal"] for r in tensorize.compare_weights(original, load_file(out / ADAPTER_WEIGHTS))
    )
    capsys.readouterr()
    assert main(["serve-command", f"{LORA}@v1"]) == 0
    fetch, serve = capsys.readouterr().out.strip().splitlines()
    assert fetch.startswith(f"modelpub fetch-adapter {LORA}@v1 ")
    assert f"vllm serve {store.uri(f'vllm/{LLAMA}/v1')} --load-format tensorizer" in serve
    assert serve.endswith(
        f"--enable-lora --max-lora-rank 8 --lora-modules {LORA}={fetch.split()[-1]}"
    )
    assert main(["verify", f"{LORA}@v1"]) == 0
    assert f"{LORA}@v1: OK (3 files, 8 tensors verified)" in capsys.readouterr().out
    assert main(["fetch-adapter", f"{LLAMA}@v1", str(tmp_path / "x")]) == 1
    assert "is a model, not an adapter" in capsys.readouterr().err


@pytest.mark.vllm
def test_an_adapter_that_changes_nothing_is_not_published(published_base: Env):
    with pytest.raises(PublishFailed) as failed:
        publish_adapter(published_base.settings, ZERO)
    assert "vllm_outputs_match: with the adapter vLLM generated what the base model" in str(
        failed.value
    )
    registry = Registry(LocalStore(published_base.settings.store))
    assert registry.versions(ZERO) == [] and registry.aliases(ZERO) == {}


@pytest.mark.vllm
@pytest.mark.parametrize(
    "adapter, error",
    [
        (WRONG_NAME, "base_model_name_or_path is 'someone-else/a-model'"),
        (OPT_LORA, "does not fit test-org/tiny-llama"),
    ],
)
def test_a_mismatched_adapter_fails_before_any_upload(published_base: Env, adapter, error):
    with pytest.raises(PublishFailed, match=error) as failed:
        publish_adapter(published_base.settings, adapter)
    assert "nothing was uploaded" in str(failed.value)
    store = LocalStore(published_base.settings.store)
    assert _published_files(published_base, adapter) == []
    assert store.list(f"registry/{adapter}") == []
