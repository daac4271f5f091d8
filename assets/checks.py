"""Blocking round-trip checks on `tensorized_model`: nothing is published unless all pass."""

import json
from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from assets.gpu import GPU_OP_TAGS
from assets.metadata import md_table
from assets.models import tensorized_model
from assets.partitions import models_partitions
from assets.state import latest_metadata
from resources.dagster_resources import (
    CatalogResource,
    HubResource,
    KeyStoreResource,
    ObjectStoreResource,
    VllmResource,
)
from resources.registry import artifact_prefix
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


def _results(report: RoundTripReport) -> Iterator[AssetCheckResult]:
    summary = report.summary()
    yield AssetCheckResult(
        check_name="tensors_match",
        passed=report.tensors_passed,
        severity=AssetCheckSeverity.ERROR,
        description=report.tensors_error,
        metadata={
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
    op_tags=GPU_OP_TAGS,
)
def roundtrip_checks(
    context: AssetCheckExecutionContext,
    catalog: CatalogResource,
    hub: HubResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    vllm: VllmResource,
) -> Iterator[AssetCheckResult]:
    op = context.op_execution_context
    cat = catalog.load()
    entry = cat.entry(op.partition_key)
    target = latest_metadata(op, "tensorized_model")["target"]
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
            fmt=target["format"],
            tensor_parallel_size=target["tensor_parallel_size"],
        )
        return roundtrip.run(vllm.generate)

    if target["key_id"]:
        with keys.keyfile(target["key_id"]) as keyfile:
            report = check(keyfile)
    else:
        report = check(None)
    store.create(
        f"validation/{entry.repo_id}/{target['suffix']}/{op.run.run_id}.json",
        json.dumps(report.to_json(), indent=2, default=str).encode(),
    )
    context.log.info(
        f"round trip of {entry.repo_id}@{target['suffix']}: {json.dumps(report.summary())}"
    )
    yield from _results(report)
