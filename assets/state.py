"""What one step of a publish run hands the next: small facts, read from the instance.

Large files never pass through an IO manager; each asset records what the next one
needs (the pinned sha, the suffix, file hashes) as materialization metadata and run
tags, and the next step reads them back from the Dagster instance.
"""

from __future__ import annotations

from typing import Any

from dagster import AssetExecutionContext, AssetKey, AssetRecordsFilter, Failure

SHA_TAG = "modelpub/sha"


def latest_metadata(context: AssetExecutionContext, asset: str) -> dict[str, Any]:
    """The metadata of the latest materialization of `asset` for this run's partition."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        raise Failure(
            f"{asset} has not been materialized for partition {context.partition_key!r}; "
            "materialize it first (or run the whole publish job)"
        )
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def run_sha(context: AssetExecutionContext) -> str:
    """The commit this run publishes: pinned in a run tag, else the latest snapshot's."""
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is not None and SHA_TAG in run.tags:
        return run.tags[SHA_TAG]
    return latest_metadata(context, "model_snapshot")["sha"]
