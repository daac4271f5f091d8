"""Blocking round-trip checks on `tensorized_model` and `tensorized_adapter`: nothing is
published unless all pass."""

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    DynamicPartitionsDefinition,
    Failure,
    MetadataValue,
    OpExecutionContext,
    PreviewWarning,
    multi_asset_check,
)

from assets.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    VllmResource,
)
from assets.gpu import GpuPlacement
from assets.metadata import md_table
from assets.partitions import adapters_partitions, models_partitions
from assets.publish_jobs import ADAPTER_JOB, MODEL_JOB, PublishJob
from assets.state import PROOF, VERIFY_TAG, staged_artifact
from resources.catalog import Catalog
from resources.formats.access import vllm_loader_options
from resources.layout import validation_key
from resources.registry.records import AdapterSettings, RoundTripProof, StagedArtifact
from resources.registry.registry import RegistryError
from resources.storage.keys import KeyStore
from resources.storage.store import ObjectStore
from resources.validation.adapter_roundtrip import AdapterRoundTrip
from resources.validation.roundtrip import RoundTrip, RoundTripReport
from resources.vllm.runner import GenerationSpec

CHECKS = {
    "tensors_match": "Every tensor, deserialized from the store with its key and "
    "verify_hash=True, equals the source checkpoint's (names, dtypes, shapes, bytes), and "
    "every file's sha256 matches what was uploaded.",
    "vllm_outputs_match": "vLLM loading the published artifact (load_format=tensorizer) "
    "generates the same greedy tokens as vLLM loading the source snapshot, with logprobs "
    "within the catalog's tolerance.",
    "great_expectations": "A Great Expectations suite over the per-tensor and per-prompt "
    "comparison tables.",
}
ADAPTER_CHECKS = {
    "tensors_match": "The adapter, restored from the store the way serving code restores it "
    "(every file's sha256 checked, tensors decrypted with verify_hash=True, written as "
    "PEFT safetensors), holds exactly the source adapter's tensors.",
    "vllm_outputs_match": "One vLLM engine on the published base model (enable_lora=True) "
    "generates the same greedy tokens with the restored adapter as with the original "
    "(logprobs within the base's tolerance), and something different from the base model "
    "alone on at least one prompt: proof that the adapter is applied.",
    "great_expectations": "A Great Expectations suite over the per-tensor and per-prompt "
    "comparison tables, including that some prompt differs from the base model.",
}
MODEL_COLUMNS = ["prompt", "tokens", "tokens_equal", "max_abs_logprob_diff", "published_text"]
ADAPTER_COLUMNS = [*MODEL_COLUMNS, "differs_from_base", "base_text"]


def check_target(
    op: OpExecutionContext, repo_id: str, registry: RegistryResource
) -> StagedArtifact:
    """The version to check: a published one named by the run's VERIFY_TAG (a checks-only
    re-verification), else the one this run's `tensorized_model` staged."""
    suffix = op.run.tags.get(VERIFY_TAG)
    if not suffix:
        return staged_artifact(op, MODEL_JOB.serialize)
    try:
        return StagedArtifact.of_version(registry.open().version(repo_id, suffix))
    except RegistryError as exc:
        raise Failure(f"cannot re-verify: {exc}", allow_retries=False) from None


def _specs(checks: dict[str, str], asset: str, partitions_def) -> list[AssetCheckSpec]:
    """Partitioned check specs (a Dagster preview feature, used knowingly: its warning
    would otherwise greet every CLI user)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return [
            AssetCheckSpec(
                name, asset=asset, blocking=True, description=text, partitions_def=partitions_def
            )
            for name, text in checks.items()
        ]


def _finish(
    context: AssetCheckExecutionContext,
    store: ObjectStore,
    target: StagedArtifact,
    report: RoundTripReport,
    columns: list[str],
) -> Iterator[AssetCheckResult]:
    """Keep the report beside the version (for people: nothing reads it back), then the
    results, each naming the version it checked and linking the report; `tensors_match`
    carries the proof the publish step signs (assets/state.py round_trip_proof)."""
    op = context.op_execution_context
    report_key = validation_key(target.repo_id, target.suffix, op.run.run_id)
    store.create(report_key, json.dumps(report.to_json(), indent=2, default=str).encode())
    context.log.info(f"round trip of {target.reference}: {json.dumps(report.summary())}")
    version = {
        "version": target.reference,
        "sha": target.sha,
        "reverification": bool(op.run.tags.get(VERIFY_TAG)),
        "report_uri": MetadataValue.url(store.uri(report_key)),
    }
    yield from _results(report, columns, version, report.proof(store.uri(report_key)))


def _results(
    report: RoundTripReport, columns: list[str], version: dict, proof: RoundTripProof
) -> Iterator[AssetCheckResult]:
    summary = report.summary()
    yield AssetCheckResult(
        check_name="tensors_match",
        passed=report.tensors_passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.tensors_problem(),
        metadata={
            **version,
            "tensors_compared": len(report.tensors),
            "tensors_equal": sum(r["equal"] for r in report.tensors),
            "error": report.tensors_error or "",
            PROOF: MetadataValue.json(proof.model_dump()),
            "files": MetadataValue.md(
                md_table(report.files, ["file", "size", "present", "sha256_matches"])
            ),
            "tensors": MetadataValue.md(
                md_table(
                    report.tensors, ["name", "source_dtype", "published_dtype", "shape", "equal"]
                )
            ),
        },
    )
    yield AssetCheckResult(
        check_name="vllm_outputs_match",
        passed=report.generations_passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.generations_problem(),
        metadata={
            **version,
            "prompts": len(report.generations),
            "max_abs_logprob_diff": summary["generations"]["max_abs_logprob_diff"] or 0.0,
            "engine_start_s": MetadataValue.json(report.engine_start_s),
            "error": report.generations_error or "",
            "generations": MetadataValue.md(md_table(report.generations, columns)),
        },
    )
    yield AssetCheckResult(
        check_name="great_expectations",
        passed=report.expectations_passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.expectations_problem(),
        metadata={
            **version,
            "expectations": MetadataValue.md(
                md_table(
                    report.expectations.get("results", []),
                    ["table", "expectation", "column", "success"],
                )
            ),
        },
    )


@dataclass(frozen=True)
class CheckInputs:
    """What both round-trip checks open from their resources."""

    op: OpExecutionContext
    catalog: Catalog
    hub: HubResource
    store: ObjectStore
    keys: KeyStore
    registry: RegistryResource
    generate: Callable[[GenerationSpec], dict]


def model_round_trip(c: CheckInputs) -> tuple[StagedArtifact, RoundTripReport]:
    """The staged (or re-verified) model version against its source snapshot."""
    entry = c.catalog.entry(c.op.partition_key)
    target = check_target(c.op, entry.repo_id, c.registry)
    snapshot = c.hub.hub(c.catalog.hubs[entry.hub]).snapshot(entry.repo_id, target.sha, c.hub.cache)
    with ExitStack() as stack:
        keyfile = stack.enter_context(c.keys.keyfile(target.key_id)) if target.key_id else None
        report = RoundTrip(
            store=c.store,
            prefix=target.prefix,
            files=target.files,
            snapshot=snapshot,
            dtype=target.settings.dtype,
            key_id=target.key_id,
            key=keyfile.read_bytes() if keyfile else None,
            keyfile=keyfile,
            prompts=entry.prompts,
            max_tokens=entry.max_tokens,
            tolerance=entry.logprob_tolerance,
            fmt=target.settings.format,
            tensor_parallel_size=target.settings.tensor_parallel_size,
        ).run(c.generate)
    return target, report


def adapter_round_trip(c: CheckInputs) -> tuple[StagedArtifact, RoundTripReport]:
    """The staged adapter on its published base, which runs from its own artifact
    (tensorizer, its key), as it is served."""
    adapter = c.catalog.adapter(c.op.partition_key)
    target = staged_artifact(c.op, ADAPTER_JOB.serialize)
    settings = target.settings
    if not isinstance(settings, AdapterSettings):
        raise Failure(f"{target.reference} is not an adapter version", allow_retries=False)
    snapshot = c.hub.hub(c.catalog.hubs[adapter.hub]).snapshot(
        adapter.adapter.repo_id, target.sha, c.hub.cache
    )
    base = c.registry.open().version(settings.base_repo_id, settings.base_suffix)
    base_prefix, base_tensors = base.location
    loader = vllm_loader_options(c.store, f"{base_prefix}/{base_tensors}", with_secrets=True)
    with ExitStack() as stack:
        if base.key_id:
            loader["encryption_keyfile"] = str(stack.enter_context(c.keys.keyfile(base.key_id)))
        report = AdapterRoundTrip(
            store=c.store,
            prefix=target.prefix,
            files=target.files,
            snapshot=snapshot,
            key_id=target.key_id,
            key=c.keys.get(target.key_id) if target.key_id else None,
            rank=settings.rank,
            base_model=stack.enter_context(c.store.config_dir(base_prefix, base.files)),
            base_loader=loader,
            dtype=base.dtype,
            prompts=adapter.prompts,
            max_tokens=adapter.max_tokens,
            tolerance=adapter.base.logprob_tolerance,
            tensor_parallel_size=base.tensor_parallel_size,
        ).run(c.generate)
    return target, report


RoundTripRun = Callable[[CheckInputs], tuple[StagedArtifact, RoundTripReport]]


def round_trip_check(
    job: PublishJob,
    checks: dict[str, str],
    partitions: DynamicPartitionsDefinition,
    columns: list[str],
    run: RoundTripRun,
    gpu: GpuPlacement,
) -> AssetChecksDefinition:
    """The blocking checks on `job`'s serialize step: `run` proves its round trip."""

    @multi_asset_check(
        specs=_specs(checks, job.serialize, partitions),
        name=job.checks,
        pool="gpu",
        op_tags=gpu.op_tags(),
    )
    def round_trip(
        context: AssetCheckExecutionContext,
        catalog: CatalogResource,
        hub: HubResource,
        object_store: ObjectStoreResource,
        key_store: KeyStoreResource,
        registry: RegistryResource,
        vllm: VllmResource,
    ) -> Iterator[AssetCheckResult]:
        store = object_store.open()
        inputs = CheckInputs(
            context.op_execution_context,
            catalog.load(),
            hub,
            store,
            key_store.open(),
            registry,
            vllm.generate,
        )
        target, report = run(inputs)
        yield from _finish(context, store, target, report, columns)

    return round_trip


def check_assets(gpu: GpuPlacement) -> list[AssetChecksDefinition]:
    """The blocking round-trip checks of both paths, on GPU nodes as `gpu` says."""
    return [
        round_trip_check(
            MODEL_JOB, CHECKS, models_partitions, MODEL_COLUMNS, model_round_trip, gpu
        ),
        round_trip_check(
            ADAPTER_JOB,
            ADAPTER_CHECKS,
            adapters_partitions,
            ADAPTER_COLUMNS,
            adapter_round_trip,
            gpu,
        ),
    ]
