"""Blocking round-trip checks on `tensorized_model`: nothing is published unless all pass."""

import json
from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    Failure,
    MetadataValue,
    OpExecutionContext,
    multi_asset_check,
)

from assets.metadata import md_table
from assets.models import tensorized_model
from assets.partitions import models_partitions
from assets.state import VERIFY_TAG, latest_metadata, record_target
from resources.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    VllmResource,
)
from resources.registry import RegistryError, artifact_prefix
from resources.roundtrip import RoundTrip, RoundTripReport

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


def check_target(op: OpExecutionContext, repo_id: str, registry: RegistryResource) -> dict:
    """The version to check: a published one named by the run's VERIFY_TAG (a scheduled
    re-verification), else the one this run's `tensorized_model` just wrote."""
    suffix = op.run.tags.get(VERIFY_TAG)
    if not suffix:
        return latest_metadata(op, "tensorized_model")["target"]
    try:
        return record_target(registry.open().version(repo_id, suffix))
    except RegistryError as exc:
        raise Failure(f"cannot re-verify: {exc}") from None


def _results(report: RoundTripReport, version: dict) -> Iterator[AssetCheckResult]:
    summary = report.summary()
    yield AssetCheckResult(
        check_name="tensors_match",
        passed=report.tensors_passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.tensors_error,
        metadata={
            **version,
            "tensors_compared": len(report.tensors),
            "tensors_equal": sum(r["equal"] for r in report.tensors),
            "error": report.tensors_error or "",
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
        description=report.generations_error,
        metadata={
            **version,
            "prompts": len(report.generations),
            "max_abs_logprob_diff": summary["generations"]["max_abs_logprob_diff"] or 0.0,
            "engine_start_s": MetadataValue.json(report.engine_start_s),
            "error": report.generations_error or "",
            "generations": MetadataValue.md(
                md_table(
                    report.generations,
                    ["prompt", "tokens", "tokens_equal", "max_abs_logprob_diff", "published_text"],
                )
            ),
        },
    )
    yield AssetCheckResult(
        check_name="great_expectations",
        passed=report.expectations_passed,
        severity=AssetCheckSeverity.ERROR,
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


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            name,
            asset=tensorized_model,
            blocking=True,
            description=text,
            partitions_def=models_partitions,
        )
        for name, text in CHECKS.items()
    ],
    name="roundtrip_checks",
    pool="gpu",
)
def roundtrip_checks(
    context: AssetCheckExecutionContext,
    catalog: CatalogResource,
    hub: HubResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    registry: RegistryResource,
    vllm: VllmResource,
) -> Iterator[AssetCheckResult]:
    op = context.op_execution_context
    cat = catalog.load()
    entry = cat.entry(op.partition_key)
    target = check_target(op, entry.repo_id, registry)
    snapshot = hub.hub(cat.hubs[entry.hub]).snapshot(entry.repo_id, target["sha"], hub.cache)
    store = object_store.open()
    prefix = artifact_prefix(entry.repo_id, target["suffix"])
    keys = key_store.open()

    def check(keyfile) -> RoundTripReport:
        roundtrip = RoundTrip(
            store=store,
            prefix=prefix,
            files=target["files"],
            snapshot=snapshot,
            dtype=target["dtype"],
            key_id=target["key_id"],
            key=keyfile.read_bytes() if keyfile else None,
            keyfile=keyfile,
            prompts=entry.prompts,
            max_tokens=entry.max_tokens,
            tolerance=entry.logprob_tolerance,
        )
        return roundtrip.run(vllm.generate)

    if target["key_id"]:
        with keys.keyfile(target["key_id"]) as keyfile:
            report = check(keyfile)
    else:
        report = check(None)
    report_key = f"validation/{entry.repo_id}/{target['suffix']}/{op.run.run_id}.json"
    store.create(
        report_key,
        json.dumps(report.to_json(), indent=2, default=str).encode(),
    )
    context.log.info(
        f"round trip of {entry.repo_id}@{target['suffix']}: {json.dumps(report.summary())}"
    )
    version = {
        "version": f"{entry.repo_id}@{target['suffix']}",
        "sha": target["sha"],
        "reverification": bool(op.run.tags.get(VERIFY_TAG)),
        "report_uri": MetadataValue.url(store.uri(report_key)),
    }
    yield from _results(report, version)
