"""What one step of a publish run hands the next: small typed facts, read from this run.

Large files never pass through an IO manager; each asset records what the next one
needs (the pinned sha, the staged artifact) as materialization metadata and run tags,
and the next step reads them back from *its own run's* event stream, never "the latest
materialization of this partition", which may be another run's: two runs of one entry
in flight together would then check or publish each other's suffix. A re-execution of
a failed run reads what the run it re-executes produced (its parent, and so on up).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetExecutionContext,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Failure,
    OpExecutionContext,
    RunsFilter,
)

from resources.registry.records import RoundTripProof, RunState, StagedArtifact, Worker

SHA_TAG = "modelpub/sha"
# Run tags that steer a run (set by sensors, schedules, or by hand in the launchpad):
VERIFY_TAG = "modelpub/verify"  # the suffix a checks-only run re-verifies
ALIASES_TAG = "modelpub/aliases"  # comma-separated aliases to move on publish (default latest)
ROTATED_FROM_TAG = "modelpub/rotated_from"  # the suffix a key rotation re-publishes
PARTITION_TAG = "dagster/partition"  # how a checks-only run (no partitions_def) names its entry
BASE_TAG = "modelpub/base_suffix"  # an adapter run: the base version it publishes against
ROOT_RUN_TAG = "dagster/root_run_id"  # set by Dagster on every re-execution
STAGED = "staged"  # the metadata entry of `tensorized_*` that holds its StagedArtifact
PROOF = "proof"  # the metadata entry of a `tensors_match` check that holds its RoundTripProof

Context = AssetExecutionContext | OpExecutionContext


def run_state(instance: DagsterInstance, run_id: str) -> RunState:
    """Whether a run may still publish: "running" while it or a re-execution of it runs."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    family = instance.get_runs(RunsFilter(tags={ROOT_RUN_TAG: run.root_run_id or run_id}))
    return "finished" if all(r.is_finished for r in [run, *family]) else "running"


def run_lineage(context: Context) -> list[str]:
    """This run's id, then the run it re-executes, and so on back to the first."""
    lineage = []
    run = context.run
    while run is not None:
        lineage.append(run.run_id)
        run = context.instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return lineage


def _run_events(context: Context, of_type: DagsterEventType) -> Iterator[Any]:
    """The event-specific data of this run's events of one type, newest first, then those
    of the run it re-executes, and so on back."""
    for run_id in run_lineage(context):
        records = context.instance.get_records_for_run(run_id, of_type=of_type).records
        for record in reversed(records):
            event = record.event_log_entry.dagster_event
            if event is not None:
                yield event.event_specific_data


def run_output(context: Context, asset: str) -> dict[str, Any]:
    """The metadata `asset` recorded for this partition in this run (or, re-executing, in
    the run this one re-executes)."""
    key = AssetKey(asset)
    for data in _run_events(context, DagsterEventType.ASSET_MATERIALIZATION):
        materialization = data.materialization
        if materialization.asset_key == key and materialization.partition == context.partition_key:
            return {k: v.value for k, v in materialization.metadata.items()}
    raise Failure(
        f"this run has not materialized {asset} for {context.partition_key!r}; run the whole "
        "publish job (or re-execute a run that did)",
        allow_retries=False,
    )


def round_trip_proof(context: Context, asset: str, reference: str) -> RoundTripProof:
    """What this run's blocking `tensors_match` check on `asset` proved about `reference`
    (re-executing: the run that ran the checks), read from Dagster's event log."""
    key = AssetKey(asset)
    for evaluation in _run_events(context, DagsterEventType.ASSET_CHECK_EVALUATION):
        if (
            isinstance(evaluation, AssetCheckEvaluation)
            and evaluation.asset_key == key
            and evaluation.check_name == "tensors_match"
            and evaluation.partition == context.partition_key
            and PROOF in evaluation.metadata
            and evaluation.metadata["version"].value == reference
        ):
            return RoundTripProof.model_validate(evaluation.metadata[PROOF].value)
    raise Failure(
        f"no round trip of {reference} in this run: its checks did not run; run the whole "
        "publish job",
        allow_retries=False,
    )


def staged_artifact(context: Context, asset: str) -> StagedArtifact:
    """The artifact this run's `asset` step staged (or reuses)."""
    return StagedArtifact.model_validate(run_output(context, asset)[STAGED])


def pin_tag(context: AssetExecutionContext, tag: str, resolve: Callable[[], str]) -> str:
    """The run's value for `tag`: as pinned already (by an earlier step or whoever launched
    the run), else resolved now and pinned, so every later step uses the same one."""
    run = context.instance.get_run_by_id(context.run.run_id)
    value = (run.tags.get(tag) if run else None) or resolve()
    context.instance.add_run_tags(context.run.run_id, {tag: value})
    return value


def run_tag(context: AssetExecutionContext, tag: str, asset: str, field: str) -> str:
    """A value pinned in a run tag, else the one this run's `asset` recorded."""
    run = context.instance.get_run_by_id(context.run.run_id)
    if run is not None and tag in run.tags:
        return run.tags[tag]
    return run_output(context, asset)[field]


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
