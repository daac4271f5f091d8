"""The publish paths (models, adapters): what their assets share, declared once.

No `from __future__ import annotations` here: Dagster reads the asset function's
annotations (context and resources) at definition time.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DynamicPartitionsDefinition,
    MaterializeResult,
    RetryPolicy,
    asset,
)

from assets.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    RegistryResource,
    TensorizerResource,
)
from assets.errors import classified_errors, transient_retry
from assets.gpu import GpuPlacement
from assets.partitions import adapters_partitions, models_partitions
from assets.publishing import PublishConfig, Serve, publish_step, tensorize_step
from assets.state import staged_artifact
from resources.catalog import Catalog
from resources.registry.stage import StageRequest
from resources.settings import Settings

OWNERS = ["team:ml-platform"]


def stage_tags(artifact: str, stage: str) -> dict[str, str]:
    """Asset tags for selecting in the UI and CLI, e.g. `tag:modelpub/stage=publish`."""
    return {"modelpub/artifact": artifact, "modelpub/stage": stage}


@dataclass(frozen=True)
class StepPolicy:
    """What the settings decide about every step: how transient failures retry, and where
    the GPU steps run. Fixed when the definitions are built (`build_definitions`)."""

    retry: RetryPolicy
    gpu: GpuPlacement

    @classmethod
    def of(cls, settings: Settings) -> "StepPolicy":
        return cls(transient_retry(settings.retry_delay_s), GpuPlacement.of(settings))


@dataclass(frozen=True)
class PublishPath:
    """What the assets of one publish path (models, adapters) share: what they publish,
    their partitions and group, and how each step is declared."""

    artifact: str  # "model" or "adapter"
    group: str
    partitions: DynamicPartitionsDefinition

    def step(self, stage: str, policy: StepPolicy, **declared: Any) -> dict[str, Any]:
        """The `@asset` arguments of this path's `stage` (fetch, serialize, publish): its
        partitions, owners, group, tags and `policy`'s retries, plus what it declares."""
        return {
            "partitions_def": self.partitions,
            "owners": OWNERS,
            "group_name": self.group,
            "tags": stage_tags(self.artifact, stage),
            "retry_policy": policy.retry,
            **declared,
        }


MODEL_PATH = PublishPath("model", "models", models_partitions)
ADAPTER_PATH = PublishPath("adapter", "adapters", adapters_partitions)


@dataclass(frozen=True)
class SerializeInputs:
    """What a path's serialize step builds its StageRequest from."""

    context: AssetExecutionContext
    force: bool
    catalog: Catalog
    hub: HubResource
    registry: RegistryResource


# A path's build: its StageRequest, and the snapshot directory it serializes.
BuildRequest = Callable[[SerializeInputs], tuple[StageRequest, Path]]


def serialized_asset(
    path: PublishPath,
    policy: StepPolicy,
    name: str,
    fetched: AssetsDefinition,
    build: BuildRequest,
    description: str,
    **declared: Any,
) -> AssetsDefinition:
    """The serialize step of a publish path: `tensorize_step` on what `build` asks for."""

    @asset(
        name=name,
        deps=[fetched],
        kinds={"tensorizer", "pytorch"},
        description=description,
        **path.step("serialize", policy, **declared),
    )
    @classified_errors()
    def serialized(
        context: AssetExecutionContext,
        config: PublishConfig,
        catalog: CatalogResource,
        hub: HubResource,
        key_store: KeyStoreResource,
        registry: RegistryResource,
        tensorizer: TensorizerResource,
    ) -> MaterializeResult:
        inputs = SerializeInputs(context, config.force, catalog.load(), hub, registry)
        request, snapshot = build(inputs)
        return tensorize_step(context, request, snapshot, registry, key_store, tensorizer)

    return serialized


def published_asset(
    path: PublishPath,
    policy: StepPolicy,
    name: str,
    staged: AssetsDefinition,
    ref: Callable[[Catalog, str], str],
    serve: Serve,
    description: str,
) -> AssetsDefinition:
    """The last asset of a publish path: `publish_step` on what this run's `staged` step
    staged. `ref` is the catalog ref of the partition's repo; `serve` how to serve a
    version of it."""
    staged_name = staged.key.to_user_string()

    @asset(
        name=name,
        deps=[staged],
        kinds={"vllm"},
        **path.step("publish", policy),
        description=description,
    )
    @classified_errors()
    def published(
        context: AssetExecutionContext,
        catalog: CatalogResource,
        registry: RegistryResource,
        key_store: KeyStoreResource,
    ) -> MaterializeResult:
        return publish_step(
            context,
            ref=ref(catalog.load(), context.partition_key),
            staged=staged_artifact(context, staged_name),
            asset=staged_name,
            registry=registry,
            key_store=key_store,
            serve=serve,
        )

    return published
