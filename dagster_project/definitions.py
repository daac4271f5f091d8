"""The Dagster Definitions: assets, checks, jobs and resources, configured by `Settings`."""

from __future__ import annotations

from dagster import Definitions, EnvVar, ExecutorDefinition, multiprocess_executor

from assets.adapters import adapter_assets
from assets.checks import check_assets
from assets.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
    VllmResource,
    s3_resource,
)
from assets.models import model_assets
from assets.paths import StepPolicy
from dagster_project.jobs import publish_adapter_job, publish_model_job, reverify_model_job
from dagster_project.schedules import build_reverify_schedule, build_rotate_schedule
from dagster_project.sensors import build_revision_sensor
from resources.catalog import load_catalog
from resources.errors import ModelpubError
from resources.settings import HF_TOKEN_ENV, Settings

# What every step process imports, loaded once per run by the multiprocess executor's fork
# server: each step then forks from it instead of importing Dagster, the definitions and
# torch afresh (about 4 s of a core per step here). The fork server is one per process, so
# its environment is that of the process's first run: right for the daemon's run workers
# (a process per run); a script running several jobs under different settings in one
# process gets the first one's.
STEP_PRELOAD = ["dagster_project.definitions", "resources.validation.roundtrip"]


def executor_def(name: str) -> ExecutorDefinition:
    """The executor named by MODELPUB_EXECUTOR: `multiprocess` (default) or `k8s`."""
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name == "multiprocess":
        # the start method fixed, every other field (max_concurrent, retries, ...) still
        # the run's to set, as on Dagster's own executor
        fields = multiprocess_executor.config_schema.config_type.fields
        forkserver = {"forkserver": {"preload_modules": STEP_PRELOAD}}
        return multiprocess_executor.configured(
            lambda config: {**config, "start_method": forkserver},
            name="multiprocess_executor",
            config_schema={k: v for k, v in fields.items() if k != "start_method"},
        )
    raise ModelpubError(f"MODELPUB_EXECUTOR={name!r}: use 'multiprocess' or 'k8s'")


def build_definitions(settings: Settings) -> Definitions:
    catalog = load_catalog(settings.catalog)  # a malformed catalog fails here, before any run
    automation = catalog.automation
    policy = StepPolicy.of(settings)
    store = ObjectStoreResource(
        uri=settings.store, s3=s3_resource(settings.store, settings.store_s3)
    )
    return Definitions(
        assets=[*model_assets(policy), *adapter_assets(policy)],
        asset_checks=check_assets(policy.gpu),
        jobs=[publish_model_job, publish_adapter_job, reverify_model_job],
        sensors=[build_revision_sensor(automation.watch, policy.gpu)],
        schedules=[
            build_reverify_schedule(automation.reverify, policy.gpu),
            build_rotate_schedule(automation.rotate_keys, policy.gpu),
        ],
        executor=executor_def(settings.executor),
        resources={
            "catalog": CatalogResource(path=settings.catalog),
            "hub": HubResource(
                cache_dir=settings.cache,
                hf_endpoint=settings.hf_endpoint,
                # a secret: the UI shows the variable's name, the run resolves it
                hf_token=EnvVar(HF_TOKEN_ENV) if settings.hf_token else None,
            ),
            "object_store": store,
            "key_store": KeyStoreResource(
                uri=settings.keys,
                artifact_store_uri=settings.store,
                s3=s3_resource(settings.keys, settings.keys_s3),
            ),
            "registry": RegistryResource(store=store),
            "tensorizer": TensorizerResource(staging_dir=settings.staging),
            "vllm": VllmResource(),
        },
    )


defs = build_definitions(Settings.from_env())
