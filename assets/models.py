"""The model publish path: snapshot -> tensorized artifact -> (checks) -> registry record."""

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
)
from assets.errors import classified_errors
from assets.paths import (
    MODEL_PATH,
    SerializeInputs,
    StepPolicy,
    published_asset,
    serialized_asset,
)
from assets.publish_jobs import MODEL_JOB
from assets.publishing import (
    snapshot_metadata,
)
from assets.state import SHA_TAG, pin_tag, run_tag
from resources.formats.format import FormatError, choose_format
from resources.registry.records import ModelSettings
from resources.registry.stage import StageRequest
from resources.serving.command import serve_command
from resources.vllm.runner import PromptsTooLong, context_length, cuda_available


def model_request(inputs: SerializeInputs) -> tuple[StageRequest, Path]:
    """The model build: its format, settings and prefix; refused before anything is
    reserved if the format cannot be written here or the prompts do not fit."""
    cat = inputs.catalog
    entry = cat.entry(inputs.context.partition_key)
    sha = run_tag(inputs.context, SHA_TAG, MODEL_JOB.fetch, "sha")
    try:
        fmt = choose_format(entry.format, cuda_available(), entry.tensor_parallel_size)
    except FormatError as exc:
        raise Failure(f"{entry.repo_id}: {exc}", allow_retries=False) from None
    source = inputs.hub.hub(cat.hubs[entry.hub]).snapshot(entry.repo_id, sha, inputs.hub.cache)
    try:  # refused before anything is reserved or uploaded
        context_length(source, entry.prompts, entry.max_tokens)
    except PromptsTooLong as exc:
        raise Failure(f"{entry.repo_id}: {exc}", allow_retries=False) from None
    request = StageRequest(
        repo_id=entry.repo_id,
        sha=sha,
        settings=ModelSettings(
            dtype=entry.dtype,
            encrypted=entry.encrypt,
            format=fmt,
            tensor_parallel_size=entry.tensor_parallel_size,
        ),
        key_prefix=inputs.context.partition_key,
        cast=entry.dtype,
        force=inputs.force,
    )
    return request, source


def model_assets(policy: StepPolicy) -> list[AssetsDefinition]:
    """The model path's assets, their retries and GPU placement as `policy` says."""

    @asset(
        **MODEL_PATH.step("fetch", policy),
        kinds={"huggingface", "git"},
        description="The catalog entry's Hugging Face repo, resolved once to a commit sha and "
        "fetched into the local snapshot cache. Every later step uses that sha.",
    )
    def model_snapshot(
        context: AssetExecutionContext, catalog: CatalogResource, hub: HubResource
    ) -> MaterializeResult:
        cat = catalog.load()
        entry = cat.entry(context.partition_key)
        source = hub.hub(cat.hubs[entry.hub])
        with classified_errors():
            sha = pin_tag(context, SHA_TAG, lambda: source.resolve(entry.repo_id, entry.ref))
            path = source.snapshot(entry.repo_id, sha, hub.cache)
        return MaterializeResult(
            data_version=DataVersion(sha),
            metadata=snapshot_metadata(entry.repo_id, entry.ref, sha, path),
        )

    tensorized_model = serialized_asset(
        MODEL_PATH,
        policy,
        MODEL_JOB.serialize,
        model_snapshot,
        model_request,
        pool="gpu",  # vLLM's serializer loads the model onto the GPU (vllm format)
        op_tags=policy.gpu.op_tags(),
        description="The snapshot's weights serialized with tensorizer (encrypted unless the "
        "catalog says otherwise) and uploaded with config and tokenizer files under a new "
        "versioned suffix: the vLLM-tensorized format (vLLM's own serializer, one file per "
        "tensor-parallel rank) on a CUDA host, the HF-tensorized format elsewhere. Not visible "
        "to serving code until `published_version` records it.",
    )

    published_version = published_asset(
        MODEL_PATH,
        policy,
        MODEL_JOB.publish,
        tensorized_model,
        ref=lambda catalog, key: catalog.entry(key).ref,
        serve=lambda record, registry, store: serve_command(record, store),
        description="The immutable registry record that makes a verified artifact visible to "
        "serving code, and the `latest` alias moved to it. Runs only when every blocking "
        "round-trip check on `tensorized_model` passed.",
    )
    return [model_snapshot, tensorized_model, published_version]
