"""The publish step's decisions on plain, typed inputs (no Dagster run): what gets
recorded, what is refused, and which earlier run of the same build a run waits for."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from resources.layout import model_prefix, signature_key, validation_key
from resources.registry.publish import PublishPlan, PublishRefused, earlier_builds, publish_staged
from resources.registry.records import ModelSettings, ModelVersion, RoundTripProof, StagedArtifact
from resources.registry.registry import Registry, RegistryError
from resources.registry.signing import SigningError
from resources.storage.keys import KeyStore, open_key_store
from resources.storage.store import LocalStore

REPO, SHA = "org/m", "a" * 40
SETTINGS = ModelSettings(dtype="float16", encrypted=True)
PLAN = PublishPlan(run_id="run-1", catalog_key="org__m", hf_ref="main")
BYTES = b"bytes"
DIGEST = hashlib.sha256(BYTES).hexdigest()
NOW = datetime.now(UTC)  # the reservations below are made just now: all in flight


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(LocalStore(tmp_path / "store"))


@pytest.fixture
def keys(tmp_path) -> KeyStore:
    return open_key_store(str(tmp_path / "keys"), str(tmp_path / "store"))


def stage(
    registry: Registry, passed: bool = True, run_id: str = "run-1"
) -> tuple[StagedArtifact, RoundTripProof]:
    """A version as a run's tensorize step leaves it: reserved, files uploaded, and what
    the run's round trip proved (a hand-made proof: a test double for the checks)."""
    suffix = registry.reserve_suffix(REPO, run_id, sha=SHA, settings=SETTINGS)
    prefix = model_prefix(REPO, suffix)
    files = {}
    for name in ("model.tensors", "config.json"):
        registry.store.create(f"{prefix}/{name}", BYTES)
        files[name] = {"size": len(BYTES), "sha256": DIGEST}
    summary = {"passed": passed, "tensors": {"passed": passed, "count": 3}}
    proof = RoundTripProof(
        passed=passed,
        sha256=dict.fromkeys(files, DIGEST),
        summary=summary,
        report_uri=registry.store.uri(validation_key(REPO, suffix, run_id)),
    )
    staged = StagedArtifact(
        repo_id=REPO,
        suffix=suffix,
        sha=SHA,
        prefix=prefix,
        tensors_file="model.tensors",
        key_id=f"org__m/{suffix}",
        files=files,
        reused=False,
        settings=SETTINGS,
    )
    return staged, proof


def test_a_verified_version_is_recorded_and_aliased(registry, keys):
    staged, report = stage(registry)
    plan = PLAN.model_copy(update={"aliases": ["latest", "prod"], "rotated_from": "v0"})

    record = publish_staged(registry, registry.store, keys, staged, plan, report).record

    assert isinstance(record, ModelVersion) and record == registry.version(REPO, "v1")
    assert (record.hf_sha, record.dagster_run_id, record.rotated_from) == (SHA, "run-1", "v0")
    assert record.settings == SETTINGS and record.files == staged.files
    assert record.validation["tensors"]["count"] == 3
    assert record.validation_report == report.report_uri
    assert registry.aliases(REPO) == {"latest": "v1", "prod": "v1"}
    assert record.signing_key and registry.store.exists(signature_key(REPO, "v1"))


@pytest.mark.parametrize(
    ("passed", "aliases", "remove", "message"),
    [
        (False, ["latest"], None, "round-trip validation of org/m@v1 failed"),
        (True, ["Latest!"], None, "not alias names like 'latest'"),
        (True, ["latest"], "config.json", "config.json no longer in the store"),
        (True, ["latest"], "swap", "model.tensors changed in the store since the round trip"),
        (True, ["latest"], "gc", "`modelpub gc` \\(gc-1\\) claimed it as abandoned"),
    ],
)
def test_what_must_not_be_published_is_refused_and_nothing_is_written(
    registry, keys, passed, aliases, remove, message
):
    staged, report = stage(registry, passed=passed)
    if remove == "swap":  # between the round trip and the publish step
        registry.store.delete(f"{staged.prefix}/model.tensors")
        registry.store.create(f"{staged.prefix}/model.tensors", b"other")
    elif remove == "gc":
        assert registry.claim_abandoned(REPO, staged.suffix, "gc-1")
    elif remove:
        registry.store.delete(f"{staged.prefix}/{remove}")

    plan = PLAN.model_copy(update={"aliases": aliases})
    with pytest.raises((PublishRefused, SigningError), match=message):
        publish_staged(registry, registry.store, keys, staged, plan, report)

    assert registry.versions(REPO) == [] and registry.aliases(REPO) == {}
    assert not registry.store.exists(signature_key(REPO, staged.suffix))


def test_a_reused_version_keeps_its_record_and_moves_no_alias(registry, keys):
    staged, report = stage(registry)
    first = publish_staged(registry, registry.store, keys, staged, PLAN, report).record
    reused = StagedArtifact.of_version(first)
    again = PLAN.model_copy(update={"run_id": "run-2", "aliases": ["prod"]})

    assert publish_staged(registry, registry.store, keys, reused, again, report).record == first
    assert registry.aliases(REPO) == {"latest": "v1"}


def test_publishing_a_suffix_twice_is_refused_by_the_registry(registry, keys):
    staged, report = stage(registry)
    publish_staged(registry, registry.store, keys, staged, PLAN, report)
    signature = registry.store.get_bytes(signature_key(REPO, "v1"))
    with pytest.raises(RegistryError, match="already published"):
        publish_staged(registry, registry.store, keys, staged, PLAN, report)
    assert registry.store.get_bytes(signature_key(REPO, "v1")) == signature  # not signed again


def running(run_id: str) -> str:
    return "running"


def test_the_higher_suffix_waits_for_the_lower_and_not_the_other_way(registry):
    first = registry.reserve_suffix(REPO, "run-1", sha=SHA, settings=SETTINGS)
    second = registry.reserve_suffix(REPO, "run-2", sha=SHA, settings=SETTINGS)

    waits = earlier_builds(registry, (REPO, SHA, second), SETTINGS, ["run-2"], running, NOW)
    assert [r.run_id for r in waits] == ["run-1"]
    assert earlier_builds(registry, (REPO, SHA, first), SETTINGS, ["run-1"], running, NOW) == []


def test_no_wait_for_own_attempts_other_builds_or_ended_runs(registry):
    registry.reserve_suffix(REPO, "parent", sha=SHA, settings=SETTINGS)  # re-executed run
    registry.reserve_suffix(
        REPO, "bf16", sha=SHA, settings=SETTINGS.model_copy(update={"dtype": "bfloat16"})
    )
    registry.reserve_suffix(REPO, "other-sha", sha="b" * 40, settings=SETTINGS)
    registry.reserve_suffix(REPO, "ended", sha=SHA, settings=SETTINGS)
    mine = registry.reserve_suffix(REPO, "child", sha=SHA, settings=SETTINGS)

    def state(run_id: str) -> str:
        return "finished" if run_id == "ended" else "running"

    build = (REPO, SHA, mine)
    assert earlier_builds(registry, build, SETTINGS, ["child", "parent"], state, NOW) == []
    waits = earlier_builds(registry, build, SETTINGS, ["child"], state, NOW)
    assert [r.run_id for r in waits] == ["parent"]
