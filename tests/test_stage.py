"""The tensorize step's decisions on plain, typed inputs (resources/registry/stage.py, no Dagster
run): a build is reused where it was published, written under a reserved suffix with its
own key otherwise, and a run waits for an earlier run of the same build to reuse its
version."""

from __future__ import annotations

import pytest

from resources.formats.artifact import check_files
from resources.layout import model_prefix
from resources.registry.publish import publish_staged
from resources.registry.records import ModelSettings
from resources.registry.registry import Registry
from resources.registry.stage import StageRequest, StagingRun, stage
from resources.storage.keys import KeyStore, open_key_store
from resources.storage.store import LocalStore
from tests.conftest import LLAMA
from tests.published import proof_of
from tests.test_publish_steps import PLAN

SHA = "c" * 40
SETTINGS = ModelSettings(dtype="float16", encrypted=True)
REQUEST = StageRequest(
    repo_id=LLAMA,
    sha=SHA,
    settings=SETTINGS,
    key_prefix="test-org__tiny-llama",
    cast="float16",
)


@pytest.fixture
def stores(tmp_path) -> tuple[Registry, KeyStore]:
    """A local registry and its key store, beside each other as a publisher has them."""
    store = str(tmp_path / "store")
    return Registry(LocalStore(store)), open_key_store(str(tmp_path / "keys"), store)


def run(run_id: str, **kwargs) -> StagingRun:
    return StagingRun(run_id=run_id, lineage=[run_id], states=lambda _: "running", **kwargs)


def staged_in(registry, keys, tmp_path, mirror_template, request=REQUEST, run_=None):
    snapshot = mirror_template / LLAMA
    return stage(
        registry,
        keys,
        request,
        run_ or run("run-1"),
        snapshot,
        tmp_path / "staging",
    )


def publish(registry, keys, staged, run_id: str) -> None:
    """What the run's checks and publish step do next (the round trip made by hand)."""
    proof = proof_of(registry.store, staged.artifact)
    plan = PLAN.model_copy(update={"run_id": run_id, "catalog_key": REQUEST.key_prefix})
    publish_staged(registry, registry.store, keys, staged.artifact, plan, proof)


def test_a_new_build_is_written_under_a_reserved_suffix_with_its_own_key(
    stores, tmp_path, mirror_template
):
    registry, keys = stores
    staged = staged_in(registry, keys, tmp_path, mirror_template)
    artifact = staged.artifact
    assert (artifact.suffix, artifact.key_id, artifact.reused) == (
        "v1",
        "test-org__tiny-llama/v1",
        False,
    )
    assert registry.reservation(LLAMA, "v1").run_id == "run-1"
    assert keys.exists("test-org__tiny-llama/v1")
    assert staged.written is not None and staged.written.files == artifact.files
    checks = check_files(registry.store, artifact.prefix, artifact.files)
    assert all(c.matches for c in checks) and {c.file for c in checks} >= {"model.tensors"}


def test_an_unencrypted_build_gets_no_key(stores, tmp_path, mirror_template):
    registry, keys = stores
    plain = ModelSettings(dtype="float16", encrypted=False)
    request = StageRequest(**{**REQUEST.__dict__, "settings": plain})
    staged = staged_in(registry, keys, tmp_path, mirror_template, request)
    assert staged.artifact.key_id is None and not keys.exists("test-org__tiny-llama/v1")


def test_a_published_build_is_reused_unless_forced(stores, tmp_path, mirror_template):
    registry, keys = stores
    publish(registry, keys, staged_in(registry, keys, tmp_path, mirror_template), "run-1")
    again = staged_in(registry, keys, tmp_path, mirror_template, run_=run("run-2"))
    assert (again.artifact.suffix, again.artifact.reused, again.written) == ("v1", True, None)
    assert registry.reservation(LLAMA, "v2") is None  # nothing reserved, nothing written

    forced = StageRequest(**{**REQUEST.__dict__, "force": True})
    new = staged_in(registry, keys, tmp_path, mirror_template, forced, run("run-3"))
    assert (new.artifact.suffix, new.artifact.key_id) == ("v2", "test-org__tiny-llama/v2")
    assert keys.get("test-org__tiny-llama/v2") != keys.get("test-org__tiny-llama/v1")


def test_a_later_run_of_the_same_build_waits_and_reuses_the_earlier_ones_version(
    stores, tmp_path, mirror_template
):
    registry, keys = stores
    first = staged_in(registry, keys, tmp_path, mirror_template)  # v1, checks still running
    lines, waits = [], []

    def first_publishes_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        publish(registry, keys, first, "run-1")

    second = staged_in(
        registry,
        keys,
        tmp_path,
        mirror_template,
        run_=run("run-2", log=lines.append, sleep=first_publishes_meanwhile),
    )
    assert (second.artifact.suffix, second.written) == ("v1", None)
    assert waits == [2.0] and "run run-1 is publishing" in lines[0]
    assert registry.reservation(LLAMA, "v2").run_id == "run-2"  # its own, left unused
    assert not registry.store.exists(f"{model_prefix(LLAMA, 'v2')}/model.tensors")


def test_a_run_goes_on_with_its_own_suffix_once_the_earlier_one_ended(
    stores, tmp_path, mirror_template
):
    registry, keys = stores
    staged_in(registry, keys, tmp_path, mirror_template)  # run-1 staged v1, then died
    ended = set()

    def state(run_id: str) -> str:
        return "finished" if run_id in ended else "running"

    second = staged_in(
        registry,
        keys,
        tmp_path,
        mirror_template,
        run_=StagingRun("run-2", ["run-2"], state, sleep=lambda s: ended.add("run-1")),
    )
    assert (second.artifact.suffix, second.artifact.reused) == ("v2", False)
    assert second.written is not None
