"""`modelpub doctor` on a real test home: every check passes, and each one fails, saying
what to do, when what it checks is taken away or misconfigured."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys

import pytest
import tensorizer._crypt

from resources.operations import doctor
from resources.settings import Settings
from tests.conftest import LLAMA, catalog_yaml
from tests.fake_hub import FakeHub
from tests.test_cli import run_cli

CHECKS = [
    "python",
    "packages",
    "libsodium",
    "curl",
    "vllm plugin",
    "catalog",
    "hub mirror",
    "object store",
    "key store",
    "staging space",
]


def run(env, **kwargs) -> list[doctor.Check]:
    return doctor.run_checks(env.settings, **kwargs)


def only_failure(env, **kwargs) -> doctor.Check:
    """The one check that fails: the others still pass beside it."""
    failed = [c for c in run(env, **kwargs) if not c.ok]
    assert len(failed) == 1, [c.line() for c in failed]
    return failed[0]


def test_every_check_passes_on_the_test_environment(env):
    checks = run(env)
    assert [c.name for c in checks] == CHECKS
    assert all(c.ok for c in checks), [c.line() for c in checks if not c.ok]


def test_curl_missing_from_path(env, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    failed = only_failure(env)
    assert failed.name == "curl" and "not on PATH" in failed.detail
    assert "apt-get install curl" in failed.line()


def test_libsodium_unloadable(env, monkeypatch):
    monkeypatch.setattr(tensorizer._crypt, "available", False)  # what a failed load leaves
    failed = only_failure(env)
    assert failed.name == "libsodium" and "could not load libsodium" in failed.detail
    assert "libsodium23" in failed.fix


def test_vllm_plugin_entry_point_missing():
    failed = doctor.check_vllm_plugin("pyyaml")
    assert not failed.ok
    assert "resources.vllm.plugin:register is not in pyyaml's vllm.general_plugins" in (
        failed.detail
    )
    assert not doctor.check_vllm_plugin("no-such-distribution").ok


def test_malformed_catalog_is_its_one_line_and_no_hub_is_checked(env):
    env.write_catalog("models: [{repo_id: acme}]\n")
    checks = run(env)
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == ["catalog"]
    assert "repo id like 'org/name'" in failed[0].detail
    assert "\n" not in failed[0].line()
    assert not [c for c in checks if c.name.startswith("hub ")]


def test_hub_mirror_directory_missing(env, tmp_path):
    env.write_catalog(catalog_yaml(tmp_path / "nowhere", [{"repo_id": LLAMA}]))
    failed = only_failure(env)
    assert failed.name == "hub mirror"
    assert f"{tmp_path / 'nowhere'} does not exist" in failed.detail


def test_huggingface_hub_reachable_and_too_slow(env, mirror_template):
    with FakeHub(mirror_template) as server:
        env.write_catalog(
            catalog_yaml(env.mirror, [{"repo_id": LLAMA, "hub": "hf"}]).replace(
                "hubs:\n", f"hubs:\n  hf: {{kind: huggingface, endpoint: '{server.endpoint}'}}\n"
            )
        )
        hub = next(c for c in run(env) if c.name == "hub hf")
        assert hub.ok and f"{LLAMA}@main is " in hub.detail
        server.delays[LLAMA] = 5.0
        failed = only_failure(env, hub_timeout_s=0.5)
    assert failed.name == "hub hf" and "cannot reach" in failed.detail


def test_key_store_inside_the_object_store(env):
    env.settings = dataclasses.replace(env.settings, keys=f"{env.settings.store}/keys")
    failed = only_failure(env)
    assert failed.name == "key store" and "overlaps the artifact store" in failed.detail


def test_s3_key_store_with_the_artifact_stores_credentials(env, monkeypatch):
    """Two buckets, but one access key (boto3's chain for both): keys are not kept apart.
    No server is needed to see it; the unreachable endpoint fails the object store too."""
    for name in ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "SESSION_TOKEN", "PROFILE", "REGION"):
        monkeypatch.delenv(f"MODELPUB_S3_{name}", raising=False)
        monkeypatch.delenv(f"MODELPUB_KEYS_S3_{name}", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "shared")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("MODELPUB_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    settings = dataclasses.replace(
        Settings.from_env(), store="s3://artifacts/p", keys="s3://keys/p"
    )  # what the variables above say
    checks = {c.name: c for c in doctor.check_stores(settings)}
    assert not checks["object store"].ok and "cannot reach" in checks["object store"].detail
    assert not checks["key store"].ok
    assert "uses the artifact store's access key" in checks["key store"].detail


def test_installed_version_differs_from_the_lock(env, tmp_path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# python: {python}\nPyYAML==0.1\n")
    failed = only_failure(env, lock=lock)
    installed = importlib.metadata.version("pyyaml")
    assert failed.name == "packages"
    assert failed.detail == f"pyyaml {installed} installed, 0.1 locked"
    assert failed.fix == "run make install"
    missing = "".join(f"no-such-package-{i}==1.0\n" for i in range(7))
    lock.write_text(f"# python: {python}\n{missing}")
    assert only_failure(env, lock=lock).detail == (
        "; ".join(f"no-such-package-{i} not installed, 1.0 locked" for i in range(5))
        + "; and 2 more"
    )


def test_python_differs_from_the_lock():
    failed = doctor.check_python(doctor.parse_lock("# python: 3.10\npyyaml==6.0.4\n"))
    assert not failed.ok and "requirements.lock was made with 3.10" in failed.detail


@pytest.mark.parametrize("text", ["pyyaml>=6\n# python: 3.11\n", "pyyaml==6.0.4\n"])
def test_a_lock_that_does_not_pin_is_refused(tmp_path, text):
    lock = tmp_path / "requirements.lock"
    lock.write_text(text)
    (failed,) = doctor.check_lock(lock)
    assert not failed.ok and "cannot read" in failed.detail


def test_staging_space_below_the_minimum(env):
    failed = only_failure(env, min_free=1 << 60)
    assert failed.name == "staging space"
    assert "GiB free at" in failed.detail and "(minimum 1073741824.0 GiB)" in failed.detail


def test_a_check_that_breaks_is_a_failed_line(env, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "check_curl", broken)
    failed = only_failure(env)
    assert failed.line() == "FAIL  curl: the check itself failed: RuntimeError: boom"


def test_cli_prints_one_line_per_check_and_exits_non_zero(env):
    done = run_cli("doctor", "--min-free-gib", str(1 << 30))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line[len("FAIL  ") :].split(": ")[0] for line in lines] == CHECKS
    failed = [line for line in lines if not line.startswith("ok    ")]
    assert len(failed) == 1 and failed[0].startswith("FAIL  staging space: "), lines
    assert failed[0].endswith("-> free space there, or point MODELPUB_CACHE elsewhere")
