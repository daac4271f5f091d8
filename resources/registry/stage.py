"""Staging a version: reuse the one already published from the same build, or reserve the
next suffix, create its key and write the artifact under it.

Plain functions on typed inputs, the twin of `resources.registry.publish.publish_staged`: the
Dagster step (assets/publishing.py `tensorize_step`) hands in its run (id, the runs it
re-executes, its worker, how to ask whether another run is still in flight) and where its
log lines go, and turns the outcome into materialization metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from resources.formats.artifact import WrittenArtifact, write_artifact
from resources.formats.format import Progress, no_progress
from resources.registry.publish import earlier_builds
from resources.registry.records import (
    AdapterSettings,
    ModelSettings,
    RunState,
    StagedArtifact,
    VersionRecord,
    Worker,
)
from resources.registry.registry import Registry
from resources.storage.keys import KeyStore


@dataclass(frozen=True)
class StageRequest:
    """One build to stage (repo, sha, settings), where its files go and how."""

    repo_id: str
    sha: str
    settings: ModelSettings | AdapterSettings
    key_prefix: str  # its key is "<key_prefix>/<suffix>" (the catalog key), if encrypted
    cast: str | None  # the dtype the weights are converted to; None keeps theirs
    force: bool = False  # a new suffix even if this build was published already

    def key_id(self, suffix: str) -> str | None:
        return f"{self.key_prefix}/{suffix}" if self.settings.encrypted else None

    def prefix(self, suffix: str) -> str:
        """Where the files of version `suffix` go in the store."""
        return self.settings.files_location(self.repo_id, suffix)[0]


@dataclass(frozen=True)
class StagingRun:
    """The run that stages: the rule for two runs of one build needs to know which runs
    are this one (it and the runs it re-executes) and whether the others still run."""

    run_id: str
    lineage: list[str]  # this run's id, then the run it re-executes, and so on
    states: Callable[[str], RunState]
    worker: Worker | None = None
    log: Callable[[str], None] = lambda line: None
    poll_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class StageOutcome:
    """What staging left: the artifact to check and publish, and how it was written
    (None where an existing version is reused)."""

    artifact: StagedArtifact
    written: WrittenArtifact | None = None


def stage(
    registry: Registry,
    keys: KeyStore,
    request: StageRequest,
    run: StagingRun,
    snapshot: Path,
    staging: Path,
    progress: Progress = no_progress,
) -> StageOutcome:
    """Serialize `snapshot` under a newly reserved suffix, or reuse the version already
    published (or being published by an earlier run) from the same build."""
    existing = (
        None
        if request.force
        else registry.find_by_sha(request.repo_id, request.sha, request.settings)
    )
    if existing is not None:
        return _reused(run, existing)
    suffix = registry.reserve_suffix(
        request.repo_id,
        run.run_id,
        prefix=request.prefix,
        key_id=request.key_id,
        worker=run.worker,
        sha=request.sha,
        settings=request.settings,
    )
    if not request.force:
        earlier = wait_for_earlier_build(registry, request, suffix, run)
        if earlier is not None:
            return _reused(run, earlier)
    key_id = request.key_id(suffix)
    key = keys.create(key_id) if key_id else None
    # vLLM's tensorizer_uri name (a per-rank template when sharded)
    where, tensors_file = request.settings.files_location(request.repo_id, suffix)
    run.log(
        f"serializing {request.repo_id}@{request.sha[:12]} ({request.settings.format} format) "
        f"to {registry.store.uri(where)}"
    )
    written = write_artifact(
        registry.store,
        where,
        snapshot,
        request.cast,
        key,
        staging,
        tensors_file,
        fmt=request.settings.format,
        tensor_parallel_size=request.settings.tensor_parallel_size,
        progress=progress,
    )
    artifact = StagedArtifact(
        repo_id=request.repo_id,
        suffix=suffix,
        sha=request.sha,
        prefix=where,
        tensors_file=tensors_file,
        key_id=key_id,
        files=written.files,
        reused=False,
        settings=request.settings,
    )
    return StageOutcome(artifact, written)


def wait_for_earlier_build(
    registry: Registry, request: StageRequest, suffix: str, run: StagingRun
) -> VersionRecord | None:
    """Wait, by the rule in `resources.registry.publish.earlier_builds`, for earlier runs of this
    build; the version one of them published, or None to go on with `suffix`."""
    announced = set()
    build = (request.repo_id, request.sha, suffix)
    while True:
        earlier = earlier_builds(
            registry, build, request.settings, run.lineage, run.states, datetime.now(UTC)
        )
        published = registry.find_by_sha(request.repo_id, request.sha, request.settings)
        if published is not None or not earlier:
            return published
        for r in earlier:
            if r.run_id not in announced:
                run.log(
                    f"run {r.run_id} is publishing {request.repo_id}@{request.sha[:12]} as "
                    f"{r.suffix} with the same settings; waiting for it, to reuse that version"
                )
                announced.add(r.run_id)
        run.sleep(run.poll_s)


def _reused(run: StagingRun, record: VersionRecord) -> StageOutcome:
    artifact = StagedArtifact.of_version(record)
    run.log(
        f"{artifact.repo_id}@{artifact.sha[:12]} is already published as {artifact.suffix}; "
        "re-verifying it instead of publishing again"
    )
    return StageOutcome(artifact)
