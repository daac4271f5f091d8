"""The model publish path: snapshot -> tensorized artifact -> (checks) -> registry record."""

from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, asset

from assets.errors import TRANSIENT_RETRY, classified_errors
from assets.gpu import GPU_OP_TAGS
from assets.partitions import models_partitions
from assets.publishing import (
    OWNERS,
    PublishConfig,
    publish_step,
    snapshot_metadata,
    stage_tags,
    tensorize_step,
)
from assets.state import SHA_TAG, pin_tag, run_tag, staged_artifact
from resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
)
from resources.formats.format import FormatError, choose_format
from resources.layout import model_prefix, tensors_name
from resources.records import ModelSettings
from resources.serve import serve_command
from resources.vllm.runner import PromptsTooLong, context_length, cuda_available


@asset(
    partitions_def=models_partitions,
    kinds={"huggingface", "git"},
    owners=OWNERS,
    group_name="models",
    tags=stage_tags("model", "fetch"),
    retry_policy=TRANSIENT_RETRY,
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


@asset(
    partitions_def=models_partitions,
    deps=[model_snapshot],
    kinds={"tensorizer", "pytorch"},
    owners=OWNERS,
    group_name="models",
    tags=stage_tags("model", "serialize"),
    retry_policy=TRANSIENT_RETRY,
    pool="gpu",  # vLLM's serializer loads the model onto the GPU (vllm format)
    op_tags=GPU_OP_TAGS,
    description="The snapshot's weights serialized with tensorizer (encrypted unless the "
    "catalog says otherwise) and uploaded with config and tokenizer files under a new "
    "versioned suffix: the vLLM-tensorized format (vLLM's own serializer, one file per "
    "tensor-parallel rank) on a CUDA host, the HF-tensorized format elsewhere. Not visible "
    "to serving code until `published_version` records it.",
)
@classified_errors()
def tensorized_model(
    context: AssetExecutionContext,
    config: PublishConfig,
    catalog: CatalogResource,
    hub: HubResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    registry: RegistryResource,
    tensorizer: TensorizerResource,
) -> MaterializeResult:
    cat = catalog.load()
    entry = cat.entry(context.partition_key)
    sha = run_tag(context, SHA_TAG, "model_snapshot", "sha")
    try:
        fmt = choose_format(entry.format, cuda_available(), entry.tensor_parallel_size)
    except FormatError as exc:
        raise Failure(f"{entry.repo_id}: {exc}", allow_retries=False) from None
    source = hub.hub(cat.hubs[entry.hub]).snapshot(entry.repo_id, sha, hub.cache)
    try:  # refused before anything is reserved or uploaded
        context_length(source, entry.prompts, entry.max_tokens)
    except PromptsTooLong as exc:
        raise Failure(f"{entry.repo_id}: {exc}", allow_retries=False) from None
    return tensorize_step(
        context,
        repo_id=entry.repo_id,
        sha=sha,
        settings=ModelSettings(
            dtype=entry.dtype,
            encrypted=entry.encrypt,
            format=fmt,
            tensor_parallel_size=entry.tensor_parallel_size,
        ),
        force=config.force,
        snapshot=lambda: source,
        prefix=lambda suffix: model_prefix(entry.repo_id, suffix),
        cast=entry.dtype,
        tensors_file=tensors_name(entry.tensor_parallel_size),
        registry=registry,
        object_store=object_store,
        key_store=key_store,
        tensorizer=tensorizer,
    )


@asset(
    partitions_def=models_partitions,
    deps=[tensorized_model],
    kinds={"vllm"},
    owners=OWNERS,
    group_name="models",
    tags=stage_tags("model", "publish"),
    retry_policy=TRANSIENT_RETRY,
    description="The immutable registry record that makes a verified artifact visible to "
    "serving code, and the `latest` alias moved to it. Runs only when every blocking "
    "round-trip check on `tensorized_model` passed.",
)
@classified_errors()
def published_version(
    context: AssetExecutionContext,
    catalog: CatalogResource,
    object_store: ObjectStoreResource,
    registry: RegistryResource,
    key_store: KeyStoreResource,
) -> MaterializeResult:
    entry = catalog.load().entry(context.partition_key)
    return publish_step(
        context,
        ref=entry.ref,
        staged=staged_artifact(context, "tensorized_model"),
        asset="tensorized_model",
        registry=registry,
        object_store=object_store,
        key_store=key_store,
        serve=serve_command,
    )
