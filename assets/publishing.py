"""The steps that models and adapters share: snapshot, tensorize, publish a record.

Each publish path (assets/models.py, assets/adapters.py) says what it publishes and
where; these functions do the rest the same way for both, so a version is reused,
written, recorded and aliased by one piece of code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue
from pydantic import Field

from assets.metadata import md_table, rate
from assets.progress import step_progress
from assets.state import (
    ROTATED_FROM_TAG,
    STAGED,
    round_trip_proof,
    run_aliases,
    run_lineage,
    run_state,
    run_worker,
)
from resources import (
    KeyStoreResource,
    ObjectStoreResource,
    RegistryResource,
    TensorizerResource,
    digests,
)
from resources.formats.artifact import write_artifact
from resources.layout import registry_key
from resources.publish import PublishPlan, PublishRefused, earlier_builds, publish_staged
from resources.records import (
    AdapterSettings,
    ModelSettings,
    StagedArtifact,
    VersionRecord,
)
from resources.registry import Registry
from resources.signing import SigningError
from resources.storage.store import ObjectStore
from resources.summary import (
    COLUMNS,
    HISTORY_COLUMNS,
    VersionSummary,
    alias_history,
    history_cells,
    human_size,
)

OWNERS = ["team:ml-platform"]


def stage_tags(artifact: str, stage: str) -> dict[str, str]:
    """Asset tags for selecting in the UI and CLI, e.g. `tag:modelpub/stage=publish`."""
    return {"modelpub/artifact": artifact, "modelpub/stage": stage}


class PublishConfig(Config):
    force: bool = Field(
        False,
        description="Publish a new suffix even if this sha was already published with the "
        "same settings (by default that version is re-verified and reused).",
    )


def snapshot_metadata(repo_id: str, ref: str, sha: str, path: Path) -> dict:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    rows = [{"file": str(p.relative_to(path)), "size": human_size(p.stat().st_size)} for p in files]
    return {
        "repo_id": repo_id,
        "ref": ref,
        "sha": sha,
        "snapshot_path": MetadataValue.path(str(path)),
        "size": human_size(sum(p.stat().st_size for p in files)),
        "files": MetadataValue.md(md_table(rows, ["file", "size"])),
    }


def _earlier_run_of_same_build(
    context: AssetExecutionContext,
    reg: Registry,
    build: tuple[str, str, str],
    settings: ModelSettings | AdapterSettings,
    poll_s: float = 2.0,
) -> VersionRecord | None:
    """Wait, by the rule in `resources.publish.earlier_builds`, for earlier runs of this
    build; the version one of them published, or None to go on with this run's suffix."""
    repo_id, sha, _ = build
    announced = set()
    states = partial(run_state, context.instance)
    ours = run_lineage(context)
    while True:
        earlier = earlier_builds(reg, build, settings, ours, states, datetime.now(UTC))
        published = reg.find_by_sha(repo_id, sha, settings)
        if published is not None or not earlier:
            return published
        for r in earlier:
            if r.run_id not in announced:
                context.log.info(
                    f"run {r.run_id} is publishing {repo_id}@{sha[:12]} as {r.suffix} with "
                    "the same settings; waiting for it, to reuse that version"
                )
                announced.add(r.run_id)
        time.sleep(poll_s)


def _reused(context: AssetExecutionContext, record: VersionRecord) -> MaterializeResult:
    staged = StagedArtifact.of_version(record)
    context.log.info(
        f"{staged.repo_id}@{staged.sha[:12]} is already published as {staged.suffix}; "
        "re-verifying it instead of publishing again"
    )
    return MaterializeResult(
        metadata={
            "suffix": staged.suffix,
            "reused": True,
            "sha": staged.sha,
            STAGED: MetadataValue.json(staged.to_metadata()),
        }
    )


def tensorize_step(
    context: AssetExecutionContext,
    *,
    repo_id: str,
    sha: str,
    settings: ModelSettings | AdapterSettings,
    force: bool,
    snapshot: Callable[[], Path],
    prefix: Callable[[str], str],
    cast: str | None,
    tensors_file: str,
    registry: RegistryResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    tensorizer: TensorizerResource,
) -> MaterializeResult:
    """Serialize `snapshot()` under a newly reserved suffix at `prefix(suffix)`, or reuse
    the version already published (or being published by an earlier run) from `sha`
    with the same `settings`.

    `cast` is the dtype the weights are converted to (None keeps theirs). A `vllm`
    format has vLLM write the tensors, one file per rank of `tensor_parallel_size`;
    `tensors_file` then names vLLM's `tensorizer_uri` (a per-rank template when sharded).
    """
    reg = registry.open()
    existing = None if force else reg.find_by_sha(repo_id, sha, settings)
    if existing is not None:
        return _reused(context, existing)

    def key_name(suffix: str) -> str | None:
        return f"{context.partition_key}/{suffix}" if settings.encrypted else None

    suffix = reg.reserve_suffix(
        repo_id,
        context.run.run_id,
        prefix=prefix,
        key_id=key_name,
        worker=run_worker(context),
        sha=sha,
        settings=settings,
    )
    if not force:
        earlier = _earlier_run_of_same_build(context, reg, (repo_id, sha, suffix), settings)
        if earlier is not None:
            return _reused(context, earlier)
    source = snapshot()
    key_id = key_name(suffix)
    key = key_store.open().create(key_id) if key_id else None
    where = prefix(suffix)
    store = object_store.open()
    context.log.info(
        f"serializing {repo_id}@{sha[:12]} ({settings.format} format) to {store.uri(where)}"
    )
    written = write_artifact(
        store,
        where,
        source,
        cast,
        key,
        tensorizer.staging(context.run.run_id),
        tensors_file,
        fmt=settings.format,
        tensor_parallel_size=settings.tensor_parallel_size,
        progress=step_progress(context),
    )
    staged = StagedArtifact(
        repo_id=repo_id,
        suffix=suffix,
        sha=sha,
        prefix=where,
        tensors_file=tensors_file,
        key_id=key_id,
        files=written.files,
        reused=False,
        settings=settings,
    )
    rows = [
        {"file": n, "size": human_size(f["size"]), "sha256": digests.short(f)}
        for n, f in written.files.items()
    ]
    return MaterializeResult(
        metadata={
            "suffix": suffix,
            "sha": sha,
            "reused": False,
            "uri": MetadataValue.url(store.uri(f"{where}/{tensors_file}")),
            "encrypted": settings.encrypted,
            "key_id": key_id or "(not encrypted)",
            "tensors_size": human_size(written.tensors_bytes),
            "serialize_throughput": rate(written.tensors_bytes, written.serialize_s),
            "upload_throughput": rate(written.total_bytes, written.upload_s),
            "staging": "whole file staged, then uploaded"
            if written.peak_staging is None
            else f"streamed, staging peak {human_size(written.peak_staging)}",
            "files": MetadataValue.md(md_table(rows, ["file", "size", "sha256"])),
            STAGED: MetadataValue.json(staged.to_metadata()),
        }
    )


def publish_step(
    context: AssetExecutionContext,
    *,
    ref: str,
    staged: StagedArtifact,
    asset: str,
    registry: RegistryResource,
    object_store: ObjectStoreResource,
    key_store: KeyStoreResource,
    serve: Callable[[VersionRecord, ObjectStore], str],
) -> MaterializeResult:
    """Sign a verified version, write its immutable record and move its aliases to it
    (`latest`, or those named in the run's aliases tag).

    Refuses unless this run's round trip on `asset` passed and every file is still there
    as it checked them; a reused version is only re-verified, its record stays as it was.
    """
    reg = registry.open()
    store = object_store.open()
    repo_id, suffix = staged.repo_id, staged.suffix
    plan = PublishPlan(
        run_id=context.run.run_id,
        catalog_key=context.partition_key,
        hf_ref=ref,
        aliases=run_aliases(context),
        rotated_from=context.run.tags.get(ROTATED_FROM_TAG),
    )
    proof = round_trip_proof(context, asset, staged.reference)
    try:
        published = publish_staged(reg, store, key_store.open(), staged, plan, proof)
    except (PublishRefused, SigningError) as exc:
        raise Failure(str(exc), allow_retries=False) from None
    for note in published.kept:
        context.log.warning(note)
    record = published.record
    alias_records = reg.alias_records(repo_id)
    aliases = {a.alias: a.suffix for a in alias_records}
    moved = [a for a in alias_records if a.alias in published.moved]
    summary = VersionSummary.of(record, aliases)
    return MaterializeResult(
        metadata={
            "reference": f"{repo_id}@{suffix}",
            "version": MetadataValue.md(md_table([summary.cells()], COLUMNS)),
            "size": human_size(summary.size),
            "suffix": suffix,
            "sha": record.hf_sha,
            "newly_published": not staged.reused,
            "aliases": MetadataValue.md(
                md_table(
                    [
                        {
                            "alias": a.alias,
                            "suffix": a.suffix,
                            "protected": "yes" if a.protected else "no",
                        }
                        for a in sorted(alias_records, key=lambda a: a.alias)
                    ],
                    ["alias", "suffix", "protected"],
                )
            ),
            # the whole history of each alias this publish moved, newest first
            "alias_history": MetadataValue.md(
                md_table(
                    [history_cells(e) for e in reversed(alias_history(moved))], HISTORY_COLUMNS
                )
            ),
            "record_uri": MetadataValue.url(store.uri(registry_key(repo_id, "versions", suffix))),
            "serve_command": MetadataValue.md(f"```\n{serve(record, store)}\n```"),
            "record": MetadataValue.json(record.to_dict()),
        }
    )
