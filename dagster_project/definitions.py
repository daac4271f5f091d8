"""The Dagster Definitions: assets, checks, jobs and resources, configured from the environment."""

from __future__ import annotations

from dagster import Definitions, ExecutorDefinition, multiprocess_executor

from assets.adapters import adapter_snapshot, published_adapter, tensorized_adapter
from assets.checks import adapter_roundtrip_checks, roundtrip_checks
from assets.models import model_snapshot, published_version, tensorized_model
from dagster_project.jobs import publish_adapter_job, publish_model_job, reverify_model_job
from dagster_project.schedules import build_reverify_schedule, build_rotate_schedule
from dagster_project.sensors import build_revision_sensor
from dagster_project.settings import Settings
from resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
    VllmResource,
)
from resources.catalog import load_catalog
from resources.errors import ModelpubError
from resources.storage.s3 import ARTIFACT_ENV, KEYS_ENV, dagster_s3_config


def executor_def(name: str) -> ExecutorDefinition:
    """The executor named by MODELPUB_EXECUTOR: `multiprocess` (default) or `k8s`."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name == "multiprocess":
        return multiprocess_executor
    raise ModelpubError(f"MODELPUB_EXECUTOR={name!r}: use 'multiprocess' or 'k8s'")


def build_definitions(settings: Settings) -> Definitions:
    catalog = load_catalog(settings.catalog)  # a malformed catalog fails here, before any run
    automation = catalog.automation
    store = ObjectStoreResource(
        uri=settings.store, s3=dagster_s3_config(settings.store, ARTIFACT_ENV)
    )
    return Definitions(
        assets=[
            model_snapshot,
            tensorized_model,
            published_version,
            adapter_snapshot,
            tensorized_adapter,
            published_adapter,
        ],
        asset_checks=[roundtrip_checks, adapter_roundtrip_checks],
        jobs=[publish_model_job, publish_adapter_job, reverify_model_job],
        sensors=[build_revision_sensor(automation.watch, settings.executor)],
        schedules=[
            build_reverify_schedule(automation.reverify, settings.executor),
            build_rotate_schedule(automation.rotate_keys, settings.executor),
        ],
        executor=executor_def(settings.executor),
        resources={
            "catalog": CatalogResource(path=settings.catalog),
            "hub": HubResource(cache_dir=settings.cache),
            "object_store": store,
            "key_store": KeyStoreResource(
                uri=settings.keys,
                artifact_store_uri=settings.store,
                s3=dagster_s3_config(settings.keys, KEYS_ENV, fallback_prefix=ARTIFACT_ENV),
            ),
            "registry": RegistryResource(store=store),
            "tensorizer": TensorizerResource(staging_dir=settings.staging),
            "vllm": VllmResource(),
        },
    )


defs = build_definitions(Settings.from_env())
