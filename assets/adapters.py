"""The adapter publish path: adapter snapshot -> tensorized adapter -> (checks) -> record.

An adapter is published against one published version of its base model: the base's
`latest` alias, resolved once when the run starts and pinned in a run tag, so every
step (and the vLLM check) uses the same base. Its files live under that base version,
its record under its own repo id in the registry, naming the base version.
"""

from pathlib import Path

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    DataVersion,
    Failure,
    MaterializeResult,
    asset,
)

from assets.dagster_resources import (
    CatalogResource,
    HubResource,
    RegistryResource,
)
from assets.errors import classified_errors
from assets.paths import (
    ADAPTER_PATH,
    SerializeInputs,
    StepPolicy,
    published_asset,
    serialized_asset,
)
from assets.publish_jobs import ADAPTER_JOB
from assets.publishing import (
    snapshot_metadata,
)
from assets.state import BASE_TAG, SHA_TAG, pin_tag, run_tag
from resources.catalog import AdapterTarget, Catalog
from resources.formats.lora import AdapterError, AdapterInfo, check_compatible
from resources.registry.records import AdapterSettings, AdapterVersion, VersionRecord
from resources.registry.registry import Registry, RegistryError
from resources.registry.stage import StageRequest
from resources.serving.command import adapter_serve_command
from resources.storage.store import ObjectStore


def latest_base(registry: Registry, base_repo_id: str) -> str:
    """The suffix of the base's `latest` version; a clear failure if there is none yet."""
    try:
        return registry.resolve(f"{base_repo_id}@latest").suffix
    except RegistryError:
        raise Failure(
            f"the base model {base_repo_id} has no published version yet: publish it first "
            f"(modelpub publish {base_repo_id}), then its adapters",
            allow_retries=False,
        ) from None


def fetch_checked(
    target: AdapterTarget, catalog: Catalog, hub: HubResource, base: VersionRecord, sha: str
) -> tuple[Path, AdapterInfo]:
    """The adapter's snapshot at `sha`, refused unless it fits the base version `base`.

    The base's shapes come from its snapshot at the published sha (already in the cache
    where that base was published here).
    """
    hubs = catalog.hubs
    with classified_errors():
        path = hub.hub(hubs[target.hub]).snapshot(target.adapter.repo_id, sha, hub.cache)
        base_dir = hub.hub(hubs[target.base.hub]).snapshot(
            target.base.repo_id, base.hf_sha, hub.cache
        )
    try:
        return path, check_compatible(path, target.base.repo_id, base_dir)
    except AdapterError as exc:
        raise Failure(
            f"{target.adapter.repo_id}: {exc}; nothing was uploaded", allow_retries=False
        ) from None


def _adapter_serve(record: AdapterVersion, registry: Registry, store: ObjectStore) -> str:
    """How to serve an adapter version: its base version's command, the adapter attached."""
    base = registry.version(record.base_repo_id, record.base_suffix)
    return adapter_serve_command(record, base, store)


def adapter_request(inputs: SerializeInputs) -> tuple[StageRequest, Path]:
    """The adapter build, against the base version its run pinned; refused before anything
    is reserved unless the adapter fits that base."""
    context = inputs.context
    target = inputs.catalog.adapter(context.partition_key)
    sha = run_tag(context, SHA_TAG, ADAPTER_JOB.fetch, "sha")
    base_suffix = run_tag(context, BASE_TAG, ADAPTER_JOB.fetch, "base_suffix")
    base = inputs.registry.open().version(target.base.repo_id, base_suffix)
    path, info = fetch_checked(target, inputs.catalog, inputs.hub, base, sha)
    request = StageRequest(
        repo_id=target.adapter.repo_id,
        sha=sha,
        settings=AdapterSettings(
            dtype=info.dtype,
            rank=info.rank,
            encrypted=target.base.encrypt,
            base_repo_id=target.base.repo_id,
            base_suffix=base_suffix,
            base_hf_sha=base.hf_sha,
        ),
        key_prefix=context.partition_key,
        cast=None,
        force=inputs.force,
    )
    return request, path


def adapter_assets(policy: StepPolicy) -> list[AssetsDefinition]:
    """The adapter path's assets, their retries as `policy` says."""

    @asset(
        **ADAPTER_PATH.step("fetch", policy),
        kinds={"huggingface", "git"},
        description="The adapter's repo at a pinned commit sha, and the base version it is "
        "published against (the base's `latest`, pinned for the run). Fails unless the "
        "adapter names that base and every LoRA tensor fits the base's weights.",
    )
    @classified_errors()
    def adapter_snapshot(
        context: AssetExecutionContext,
        catalog: CatalogResource,
        hub: HubResource,
        registry: RegistryResource,
    ) -> MaterializeResult:
        cat = catalog.load()
        target = cat.adapter(context.partition_key)
        reg = registry.open()
        base_suffix = pin_tag(context, BASE_TAG, lambda: latest_base(reg, target.base.repo_id))
        base = reg.version(target.base.repo_id, base_suffix)
        source = hub.hub(cat.hubs[target.hub])
        with classified_errors():
            sha = pin_tag(
                context, SHA_TAG, lambda: source.resolve(target.adapter.repo_id, target.adapter.ref)
            )
        path, info = fetch_checked(target, cat, hub, base, sha)
        return MaterializeResult(
            data_version=DataVersion(f"{sha}+{target.base.repo_id}@{base_suffix}"),
            metadata={
                **snapshot_metadata(target.adapter.repo_id, target.adapter.ref, sha, path),
                "base": f"{target.base.repo_id}@{base_suffix}",
                "base_suffix": base_suffix,
                "base_sha": base.hf_sha,
                "rank": info.rank,
                "dtype": info.dtype,
                "target_modules": ", ".join(info.target_modules),
            },
        )

    tensorized_adapter = serialized_asset(
        ADAPTER_PATH,
        policy,
        ADAPTER_JOB.serialize,
        adapter_snapshot,
        adapter_request,
        description="The adapter's weights serialized with tensorizer (encrypted when its base "
        "is) in their own dtype, uploaded with adapter_config.json under the base version: "
        "vllm/<base>/<base suffix>/adapters/<adapter>/<suffix>/. Not visible to serving code "
        "until `published_adapter` records it.",
    )

    published_adapter = published_asset(
        ADAPTER_PATH,
        policy,
        ADAPTER_JOB.publish,
        tensorized_adapter,
        ref=lambda catalog, key: catalog.adapter(key).adapter.ref,
        serve=_adapter_serve,
        description="The immutable registry record (registry/<adapter repo>/versions/<suffix>) "
        "that makes a verified adapter visible to serving code, naming its base version, and "
        "the adapter's `latest` alias moved to it. Runs only when every blocking check on "
        "`tensorized_adapter` passed.",
    )
    return [adapter_snapshot, tensorized_adapter, published_adapter]
