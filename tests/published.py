"""Real published versions without running Dagster: a tiny model from the test's mirror,
written by the real artifact writer, a passing round trip made by hand, then `publish_staged`
(signed, recorded, aliased) as the publish step does it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from resources.catalog import partition_key
from resources.formats.artifact import check_files, write_artifact
from resources.layout import (
    ADAPTER_TENSORS_FILE,
    TENSORS_FILE,
    adapter_prefix,
    model_prefix,
)
from resources.registry.publish import PublishPlan, publish_staged
from resources.registry.records import (
    AdapterSettings,
    ArtifactSettings,
    ModelSettings,
    RoundTripProof,
    StagedArtifact,
    VersionRecord,
)
from resources.registry.registry import Registry
from resources.storage.keys import KeyStore
from resources.storage.store import ObjectStore
from resources.stores import open_stores
from tests.conftest import Env

RUN_ID = "test-run"


def stores(env: Env) -> tuple[Registry, KeyStore]:
    """The registry and key store the CLI opens for `env` (local, or S3 with `s3_env`)."""
    return open_stores(env.settings)


def _stage(
    env: Env,
    repo_id: str,
    prefix: Callable[[str], str],
    dtype: str | None,
    tensors_file: str,
    settings: ArtifactSettings,
) -> tuple[StagedArtifact, RoundTripProof]:
    registry, keys = stores(env)
    store = registry.store
    suffix = registry.reserve_suffix(repo_id, RUN_ID)
    key_id = f"{partition_key(repo_id)}/{suffix}"
    staging = env.root / "staging" / partition_key(repo_id) / suffix
    staging.mkdir(parents=True)
    written = write_artifact(
        store,
        prefix(suffix),
        env.mirror / repo_id,
        dtype,
        keys.create(key_id),
        staging,
        tensors_file=tensors_file,
    )
    staged = StagedArtifact(
        repo_id=repo_id,
        suffix=suffix,
        sha="a" * 40,
        prefix=prefix(suffix),
        tensors_file=tensors_file,
        key_id=key_id,
        files=written.files,
        reused=False,
        settings=settings,
    )
    return staged, proof_of(store, staged)


def proof_of(store: ObjectStore, staged: StagedArtifact) -> RoundTripProof:
    """A test double: a passing round trip made by hand, whose digests are read from the
    store as the round trip's own read would (no vLLM run, no comparison with the source)."""
    checks = check_files(store, staged.prefix, staged.files)
    return RoundTripProof(passed=True, sha256={c.file: c.sha256 for c in checks if c.matches})


def stage(env: Env, repo_id: str, dtype: str = "float16") -> tuple[StagedArtifact, RoundTripProof]:
    """`repo_id` as a run leaves it before publishing: reserved, uploaded (encrypted, cast
    to `dtype`) and validated. Returns the staged artifact and what its round trip proved."""
    settings = ModelSettings(dtype=dtype, encrypted=True)
    return _stage(env, repo_id, partial(model_prefix, repo_id), dtype, TENSORS_FILE, settings)


def publish_tiny_adapter(
    env: Env, repo_id: str, base: VersionRecord, rank: int = 8
) -> VersionRecord:
    """Publish the next version of adapter `repo_id` (in the mirror) on the base version,
    signed, as the adapter job does once vLLM has checked it."""
    settings = AdapterSettings(
        dtype="float32",
        rank=rank,
        encrypted=True,
        base_repo_id=base.repo_id,
        base_suffix=base.suffix,
        base_hf_sha=base.hf_sha,
    )
    prefix = partial(adapter_prefix, base.repo_id, base.suffix, repo_id)
    return publish(env, *_stage(env, repo_id, prefix, None, ADAPTER_TENSORS_FILE, settings))


def publish(env: Env, staged: StagedArtifact, proof: RoundTripProof) -> VersionRecord:
    registry, keys = stores(env)
    plan = PublishPlan(run_id=RUN_ID, catalog_key=partition_key(staged.repo_id), hf_ref="main")
    return publish_staged(registry, registry.store, keys, staged, plan, proof).record


def publish_tiny(env: Env, repo_id: str, dtype: str = "float16") -> VersionRecord:
    """Publish the next version of `repo_id` (a model in the mirror, cast to `dtype`), signed."""
    return publish(env, *stage(env, repo_id, dtype))
