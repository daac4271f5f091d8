"""Real published versions without running Dagster: a tiny model from the test's mirror,
written by the real artifact writer, a passing round-trip report, then `publish_staged`
(signed, recorded, aliased) as the publish step does it."""

from __future__ import annotations

import json

from resources.catalog import partition_key
from resources.formats.artifact import write_artifact
from resources.layout import model_prefix, validation_key
from resources.publish import PublishPlan, publish_staged
from resources.records import ModelSettings, StagedArtifact, VersionRecord
from resources.registry import Registry
from resources.storage import open_store
from resources.storage.keys import KeyStore, open_key_store
from tests.conftest import Env

RUN_ID = "test-run"


def stores(env: Env) -> tuple[Registry, KeyStore]:
    """The registry and key store the CLI opens for `env` (local, or S3 with `s3_env`)."""
    settings = env.settings
    store = open_store(settings.store, settings.store_s3)
    return Registry(store), open_key_store(settings.keys, settings.store, settings.keys_s3)


def stage(env: Env, repo_id: str) -> tuple[StagedArtifact, str]:
    """`repo_id` as a run leaves it before publishing: reserved, uploaded (encrypted, fp16)
    and validated. Returns the staged artifact and its round-trip report's key."""
    registry, keys = stores(env)
    store = registry.store
    suffix = registry.reserve_suffix(repo_id, RUN_ID)
    key_id = f"{partition_key(repo_id)}/{suffix}"
    prefix = model_prefix(repo_id, suffix)
    staging = env.root / "staging" / partition_key(repo_id) / suffix
    staging.mkdir(parents=True)
    written = write_artifact(
        store, prefix, env.mirror / repo_id, "float16", keys.create(key_id), staging
    )
    report_key = validation_key(repo_id, suffix, RUN_ID)
    store.create(report_key, json.dumps({"passed": True, "summary": {}}).encode())
    staged = StagedArtifact(
        repo_id=repo_id,
        suffix=suffix,
        sha="a" * 40,
        prefix=prefix,
        tensors_file="model.tensors",
        key_id=key_id,
        files=written.files,
        reused=False,
        settings=ModelSettings(dtype="float16", encrypted=True),
    )
    return staged, report_key


def publish(env: Env, staged: StagedArtifact, report_key: str) -> VersionRecord:
    registry, keys = stores(env)
    plan = PublishPlan(run_id=RUN_ID, catalog_key=partition_key(staged.repo_id), hf_ref="main")
    return publish_staged(registry, registry.store, keys, staged, plan, report_key).record


def publish_tiny(env: Env, repo_id: str) -> VersionRecord:
    """Publish the next version of `repo_id` (a model in the mirror), signed."""
    return publish(env, *stage(env, repo_id))
