"""What one step of a publish run hands the next: small facts, read from the instance.

Large files never pass through an IO manager; each asset records what the next one
needs (the pinned sha, the suffix, file hashes) as materialization metadata and run
tags, and the next step reads them back from the Dagster instance.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    Failure,
)

from resources.records import Worker

SHA_TAG = "modelpub/sha"
# Run tags that steer a run (set by sensors, schedules, or by hand in the launchpad):
VERIFY_TAG = "modelpub/verify"  # the suffix a checks-only run re-verifies
ALIASES_TAG = "modelpub/aliases"  # comma-separated aliases to move on publish (default latest)
ROTATED_FROM_TAG = "modelpub/rotated_from"  # the suffix a key rotation re-publishes
PARTITION_TAG = "dagster/partition"  # how a checks-only run (no partitions_def) names its entry
BASE_TAG = "modelpub/base_suffix"  # an adapter run: the base version it publishes against


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


def pin_tag(context: AssetExecutionContext, tag: str, resolve: Callable[[], str]) -> str:
    """The run's value for `tag`: as pinned already (by an earlier step or whoever launched
    the run), else resolved now and pinned, so every later step uses the same one."""
    run = context.instance.get_run_by_id(context.run.run_id)
    value = (run.tags.get(tag) if run else None) or resolve()
    context.instance.add_run_tags(context.run.run_id, {tag: value})
    return value


def run_tag(context: AssetExecutionContext, tag: str, asset: str, field: str) -> str:
    """A value pinned in a run tag, else the one `asset`'s latest materialization recorded."""
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is not None and tag in run.tags:
        return run.tags[tag]
    return latest_metadata(context, asset)[field]


def run_sha(context: AssetExecutionContext) -> str:
    """The commit this run publishes: pinned in a run tag, else the latest snapshot's."""
    return run_tag(context, SHA_TAG, "model_snapshot", "sha")


def record_target(record: dict[str, Any]) -> dict[str, Any]:
    """What the round-trip checks need to verify an already published model version."""
    from resources.registry import record_location

    return {
        "suffix": record["suffix"],
        "key_id": record["key_id"],
        "files": record["files"],
        "prefix": record_location(record)[0],
        "reused": True,
        "sha": record["hf_sha"],
        "settings": {
            **{k: record[k] for k in ("dtype", "encrypted", "format")},
            "tensor_parallel_size": record.get("tensor_parallel_size", 1),
        },
    }


def run_worker(context: AssetExecutionContext) -> Worker | None:
    """The process that runs this run and outlives this step: this one (in-process runs)
    or its parent (the run worker of the multiprocess executor). None where the run
    started elsewhere (a step pod of the Kubernetes executor): gc then goes by age."""
    started = context.instance.get_records_for_run(
        context.run.run_id, of_type=DagsterEventType.RUN_START, limit=1
    ).records
    event = started[0].event_log_entry.dagster_event if started else None
    pid = event.pid if event is not None else None
    if pid in (os.getpid(), os.getppid()):
        return Worker.of(pid)
    return None


def run_aliases(context: AssetExecutionContext) -> list[str]:
    """The aliases a publish run moves to its new version: `latest` unless tagged."""
    tagged = context.run.tags.get(ALIASES_TAG, "latest")
    return [a.strip() for a in tagged.split(",") if a.strip()]
